// libzmq's C API (Debian: libzmq3-dev).
#ifndef FWP_CZEROMQ_SHIM_H
#define FWP_CZEROMQ_SHIM_H
#include <zmq.h>
#endif
