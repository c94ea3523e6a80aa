# C declarations for asgi_hijack/_hot.py when Cython compiles it (setup.py); the .py is the only source.
cimport cython


cdef class Deadlines:
    cdef public object expire, handle, loop, timeout
    cdef public dict waiting

    cpdef add(self, key)
    cpdef discard(self, key)


cdef class KeepAliveLoop:
    cdef public Deadlines deadlines
    cdef public object loop


cdef class KeepAlive:
    cdef public Deadlines deadlines
    cdef public object callback


cdef class Connection:
    cdef public object app, conn_state, framer, hooks, info, keep_alive, stock_data_received, stock_on_response_complete
    cdef public object sniff, upgrade_memo
    cdef public Deadlines timer
    cdef public dict extension
    cdef public bint busy, strict_lf, upgrade
    cdef public Py_ssize_t started

    cpdef identity(self, transport)
    cpdef set(self, state)


@cython.locals(conn=Connection)
cpdef data_received(self, data)


cpdef bint sniff(self, Connection conn, data) except -1


@cython.locals(conn=Connection)
cpdef on_response_complete(self)


cpdef forget_request(self, cycle)


@cython.locals(found=Deadlines)
cpdef Deadlines _deadlines(protocol, name, timeout, expire)


cpdef Deadlines head_deadlines(protocol)


@cython.locals(deadlines=Deadlines, stand_in=KeepAliveLoop)
cpdef KeepAliveLoop keep_alive_loop(protocol)


@cython.locals(heads=Deadlines)
cpdef wait_for_head(protocol, Connection conn)


@cython.locals(timer=Deadlines)
cpdef head_came(protocol, Connection conn)
