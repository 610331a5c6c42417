import Testing

@testable import FWPCore

@Suite struct SystemLibraryTests {
    @Test func openBLASThreadCountIsSettable() {
        BLAS.setThreads(1)
        #expect(BLAS.threads == 1)
        #expect(BLAS.configuration.contains("OpenBLAS"))
    }

    /// Only a fallback to a pre-AVX2 kernel family on a CPU with AVX2 or AVX-512 is overridden.
    @Test func openBLASCoreTypeOverride() {
        #expect(BLAS.coreTypeOverride(detected: "Prescott", vectorLevel: 3) == "SkylakeX")
        #expect(BLAS.coreTypeOverride(detected: "PRESCOTT", vectorLevel: 2) == "Haswell")
        #expect(BLAS.coreTypeOverride(detected: "Nehalem", vectorLevel: 2) == "Haswell")
        #expect(BLAS.coreTypeOverride(detected: "Sandybridge", vectorLevel: 1) == nil)
        #expect(BLAS.coreTypeOverride(detected: "Prescott", vectorLevel: 0) == nil)
        #expect(BLAS.coreTypeOverride(detected: "Haswell", vectorLevel: 3) == nil)
        #expect(BLAS.coreTypeOverride(detected: "Zen", vectorLevel: 2) == nil)
        #expect(BLAS.coreTypeOverride(detected: "SkylakeX", vectorLevel: 3) == nil)
        #expect(BLAS.coreTypeOverride(detected: "SapphireRapids", vectorLevel: 3) == nil)
        #expect(!BLAS.coreName.isEmpty)
        #expect((0...3).contains(BLAS.vectorLevel))
    }
}
