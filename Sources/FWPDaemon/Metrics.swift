import Foundation
import Prometheus

/// The daemon's Prometheus metrics (served by the `metrics` command as text).
final class DaemonMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    private let lock = NSLock()
    private var requestCounters: [String: Counter] = [:]
    private var errorCounters: [String: Counter] = [:]
    private var finishedCounters: [String: Counter] = [:]
    let submitted: Counter
    let running: Gauge
    let queued: Gauge
    let tokens: Gauge

    init() {
        submitted = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "fwpd_jobs_submitted_total", unitName: "", helpText: "Jobs accepted by submit"))
        running = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "fwpd_jobs_running", unitName: "", helpText: "Jobs running now"))
        queued = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "fwpd_jobs_queued", unitName: "", helpText: "Jobs waiting in the queue"))
        tokens = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "fwpd_training_tokens_per_second", unitName: "", helpText: "Throughput last reported by a running job"))
    }

    func request(_ command: String) {
        let c = lock.withLock {
            if let c = requestCounters[command] { return c }
            let c = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "fwpd_requests_total", unitName: "", helpText: "Requests handled"), labels: [("command", command)])
            requestCounters[command] = c
            return c
        }
        c.increment()
    }

    func error(_ code: String) {
        let c = lock.withLock {
            if let c = errorCounters[code] { return c }
            let c = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "fwpd_request_errors_total", unitName: "", helpText: "Requests answered with an error"), labels: [("code", code)])
            errorCounters[code] = c
            return c
        }
        c.increment()
    }

    func finished(_ state: String) {
        let c = lock.withLock {
            if let c = finishedCounters[state] { return c }
            let c = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "fwpd_jobs_finished_total", unitName: "", helpText: "Jobs that reached a final state"), labels: [("state", state)])
            finishedCounters[state] = c
            return c
        }
        c.increment()
    }

    func tokensPerSecond(job: Int64, _ value: Double) { tokens.set(value) }

    /// Prometheus text exposition format.
    func text() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
