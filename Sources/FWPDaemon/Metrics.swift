import Foundation
import Prometheus
import Synchronization

/// The daemon's Prometheus metrics (served by the `metrics` command as text).
final class DaemonMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    /// Labelled counters made on first use, by metric name and label value.
    private let counters = Mutex<[String: [String: Counter]]>([:])
    let submitted: Counter
    let running: Gauge
    let queued: Gauge
    let tokens: Gauge

    init() {
        submitted = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: "fwpd_jobs_submitted_total", unitName: "", helpText: "Jobs accepted by submit"))
        running = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "fwpd_jobs_running", unitName: "", helpText: "Jobs running now"))
        queued = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "fwpd_jobs_queued", unitName: "", helpText: "Jobs waiting in the queue"))
        tokens = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                metricName: "fwpd_training_tokens_per_second", unitName: "",
                helpText: "Throughput last reported by a running job"))
    }

    func request(_ command: String) {
        labelled("fwpd_requests_total", label: "command", command, help: "Requests handled").increment()
    }

    func error(_ code: String) {
        labelled("fwpd_request_errors_total", label: "code", code, help: "Requests answered with an error").increment()
    }

    func finished(_ state: String) {
        labelled("fwpd_jobs_finished_total", label: "state", state, help: "Jobs that reached a final state").increment()
    }

    /// The counter `name{label="value"}`, made on first use.
    private func labelled(_ name: String, label: String, _ value: String, help: String) -> Counter {
        counters.withLock { counters in
            if let c = counters[name]?[value] { return c }
            let c = registry.makeCounter(
                descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help),
                labels: [(label, value)])
            counters[name, default: [:]][value] = c
            return c
        }
    }

    func tokensPerSecond(job: Int64, _ value: Double) { tokens.set(value) }

    /// Prometheus text exposition format.
    func text() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
