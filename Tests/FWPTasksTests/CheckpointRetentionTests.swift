import Testing

@testable import FWPTasks

@Suite struct CheckpointRetentionTests {
    @Test func stepNamesSortInStepOrder() {
        let steps = [9, 10, 100, 99_999, 1_000_000]
        let names = steps.map(CheckpointRetention.stepFileName)
        #expect(names.sorted() == names)
        #expect(names.allSatisfy(CheckpointRetention.isStepFileName))
        #expect(!CheckpointRetention.isStepFileName(CheckpointRetention.bestFileName))
        #expect(!CheckpointRetention.isStepFileName(".step-0000000001.safetensors.tmp"))
    }

    @Test func keepsTheNewestAndExpiresTheRest() {
        let newestFirst = [50, 40, 30, 20, 10]
        #expect(CheckpointRetention(kept: 3).expired(newestFirst: newestFirst) == [20, 10])
        #expect(CheckpointRetention(kept: 5).expired(newestFirst: newestFirst).isEmpty)
        #expect(CheckpointRetention(kept: 1).expired(newestFirst: newestFirst) == [40, 30, 20, 10])
    }
}
