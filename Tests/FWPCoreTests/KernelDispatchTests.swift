import CKernels
import Foundation
import Testing

@testable import FWPCore

/// The dispatch record against the environment the test runs in and a second reading of the CPU
/// (`/proc/cpuinfo`'s flags), so that a switch or a feature check wired to the wrong field fails.
@Suite struct KernelDispatchTests {
    let environment = ProcessInfo.processInfo.environment

    func off(_ name: String) -> Bool { environment[name] == "0" }

    /// The CPU's flags as Linux reports them (empty elsewhere).
    var cpuFlags: Set<Substring> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return [] }
        return Set(line.split(separator: ":").last?.split(separator: " ") ?? [])
    }

    @Test func vectorLevelMatchesTheCPUFlags() throws {
        let flags = cpuFlags
        try #require(!flags.isEmpty, "no /proc/cpuinfo")
        let avx2 = flags.contains("avx2") && flags.contains("fma")
        let avx512 =
            avx2 && ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy { flags.contains($0) }
        let expected = avx512 ? 3 : avx2 ? 2 : flags.contains("avx") ? 1 : 0
        #expect(KernelDispatch.vectorLevel == expected)
    }

    @Test func eachSwitchTurnsOffItsFamilyOnly() {
        let level = KernelDispatch.vectorLevel
        #expect(KernelDispatch.avx512 == (level >= 3 && !off("FWP_AVX512")))
        #expect(KernelDispatch.smallGemm == (level >= 2 && !off("FWP_SMALL_GEMM")))
        #expect(KernelDispatch.denseGemm == (level >= 3 && !off("FWP_AVX512") && !off("FWP_DENSE_GEMM")))
        #expect(KernelDispatch.vectorKernels == (level >= 2 && !off("FWP_VECTOR_KERNELS")))
        #expect(KernelDispatch.amxRequested == (environment["FWP_AMX"] == "1"))
        #expect(KernelDispatch.poisonUninitialized == (environment["FWP_POISON_UNINITIALIZED"] == "1"))
    }

    /// Swift and C read one record: what BLAS and VectorKernels say equals what the C side uses.
    @Test func swiftAndCAgree() {
        #expect(BLAS.smallKernel == KernelDispatch.smallGemm)
        #expect(BLAS.denseKernel == KernelDispatch.denseGemm)
        #expect(VectorKernels.enabled == KernelDispatch.vectorKernels)
        #expect((fwp_small_sgemm_uses_avx512() != 0) == KernelDispatch.avx512)
        #expect((fwp_small_sgemm_supported() != 0) == KernelDispatch.smallGemmSupported)
        #expect((fwp_dense_sgemm_supported() != 0) == KernelDispatch.denseGemmSupported)
    }
}
