// Open MPI's C API (Debian: libopenmpi-dev), found through pkg-config (ompi-c).
//
// MPI's handles (MPI_COMM_WORLD, MPI_BYTE, MPI_SUM, ...) are macros that take the address of
// library globals, which Swift cannot import; these inline functions hand them over as values.
#ifndef FWP_CMPI_SHIM_H
#define FWP_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm fwp_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype fwp_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype fwp_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype fwp_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype fwp_mpi_long_long(void) { return MPI_LONG_LONG; }
static inline MPI_Datatype fwp_mpi_unsigned_long_long(void) { return MPI_UNSIGNED_LONG_LONG; }
static inline void *fwp_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Op fwp_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op fwp_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op fwp_mpi_min(void) { return MPI_MIN; }
static inline MPI_Errhandler fwp_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *fwp_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int fwp_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int fwp_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int fwp_mpi_success(void) { return MPI_SUCCESS; }

#endif
