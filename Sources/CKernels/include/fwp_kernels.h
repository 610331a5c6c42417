// fwp's C kernels, by family; FWPCore imports this module (CKernels). Sources/CKernels/README.md
// names each kernel's Swift reference and the test that pins them together.
#ifndef FWP_KERNELS_H
#define FWP_KERNELS_H

#include "fwp_dispatch.h"
#include "fwp_gemm.h"
#include "fwp_elementwise.h"
#include "fwp_chunkwise.h"

#endif
