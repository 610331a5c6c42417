import CZeroMQ
import Testing

@testable import FWPCore

@Suite struct SystemLibraryTests {
    @Test func openBLASThreadCountIsSettable() {
        BLAS.setThreads(1)
        #expect(BLAS.threads == 1)
        #expect(BLAS.configuration.contains("OpenBLAS"))
    }

    @Test func libzmqLinks() {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        #expect(major >= 4)
    }
}
