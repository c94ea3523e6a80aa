# C declarations for asgi_hijack/_hot.py when Cython compiles it (setup.py); the .py is the only source.
cimport cython


cdef class Connection:
    cdef public object app, framer, hooks, info, stock_data_received, timer
    cdef public dict extension
    cdef public bint busy, strict_lf, upgrade


@cython.locals(conn=Connection)
cpdef data_received(self, data)
