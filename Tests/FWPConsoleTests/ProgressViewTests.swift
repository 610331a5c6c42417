import FWPProtocol
import Testing

@testable import FWPConsole

/// The lines fwpctl and fwp-task print for events.
@Suite struct ProgressViewTests {
    @Test func barShowsStepsLossMetricsRateAndTimeLeft() {
        let e = ProgressEvent(
            kind: "progress", step: 30, total: 120, loss: 2.5, metrics: ["bits_per_byte": 3.25, "best_valid_loss": 1],
            tokensPerSecond: 10512.4, etaSeconds: 3725)
        #expect(
            ProgressView.bar(e)
                == "[######..................] 30/120  loss 2.5000  bits_per_byte 3.25  10512 tok/s  ETA 1:02:05")
    }

    @Test func eventLinesCarryStateErrorAndResult() {
        let failed = ProgressEvent(kind: "state")
        #expect(
            ProgressView.line(failed, state: .failed, error: WireError(.diverged, "loss is nan"))
                == "[state] failed diverged: loss is nan")
        let eval = ProgressEvent(kind: "eval", step: 100, loss: 1.23456, metrics: ["accuracy": 0.5, "count": 7])
        #expect(ProgressView.line(eval) == "[eval] step 100 loss 1.2346 accuracy 0.5 count 7")
        #expect(
            ProgressView.line(ProgressEvent(kind: "state"), state: .succeeded, result: .object(["x": 1]))
                == "[state] succeeded\nresult: {\"x\":1}")
    }

    @Test func durations() {
        #expect(ProgressView.duration(59.6) == "1:00")
        #expect(ProgressView.duration(3599) == "59:59")
        #expect(ProgressView.duration(3600) == "1:00:00")
    }
}
