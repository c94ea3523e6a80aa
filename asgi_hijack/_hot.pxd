# C declarations for asgi_hijack/_hot.py when Cython compiles it (setup.py); the .py is the only source.
cimport cython


cdef class HeadDeadlines:
    cdef public object handle, loop, timeout
    cdef public dict waiting

    cpdef add(self, protocol)
    cpdef discard(self, protocol)


cdef class Connection:
    cdef public object app, framer, hooks, info, stock_data_received
    cdef public HeadDeadlines timer
    cdef public dict extension
    cdef public bint busy, strict_lf, upgrade


@cython.locals(conn=Connection)
cpdef data_received(self, data)


@cython.locals(heads=HeadDeadlines)
cpdef HeadDeadlines head_deadlines(protocol)


@cython.locals(heads=HeadDeadlines)
cpdef wait_for_head(protocol, Connection conn)


cpdef forget_request(self, cycle)
