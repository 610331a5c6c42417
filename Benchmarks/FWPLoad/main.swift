// fwp-load: a compiled load generator for fwpd (used by Benchmarks/load/load.py --generator swift).
//
//     fwp-load --endpoint tcp://127.0.0.1:5555 --job 1 [--clients 32] [--seconds 30] [--rate 10] [--key-prefix P]
//
// Each client is a thread with its own DEALER socket (one ZeroMQ context, so one I/O thread for
// all of them). A client sends `status` for the given job, and every tenth request (--submit-every;
// 0: never) a `submit`
// of a one-step retrieval job at priority -1 with a unique idempotency key, the same mix as the
// Python generator. With --rate, request n of client i is due at start + (n + i/clients) / rate;
// without it, clients run closed loops. Prints one JSON object: counts, failures, losses and latency
// quantiles per command.
import FWPProtocol
import Foundation
import ZeroMQ

struct Options {
    var endpoint = ""
    var job = 0
    var clients = 32
    var seconds = 30.0
    var rate = 0.0
    var keyPrefix = "load"
    var submitEvery = 10
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst().makeIterator()
    func value(_ name: String) -> String {
        guard let v = args.next() else {
            FileHandle.standardError.write(Data("fwp-load: \(name) needs a value\n".utf8))
            exit(2)
        }
        return v
    }
    while let a = args.next() {
        switch a {
        case "--endpoint": o.endpoint = value(a)
        case "--job": o.job = Int(value(a)) ?? 0
        case "--clients": o.clients = Int(value(a)) ?? 0
        case "--seconds": o.seconds = Double(value(a)) ?? 0
        case "--rate": o.rate = Double(value(a)) ?? -1
        case "--key-prefix": o.keyPrefix = value(a)
        case "--submit-every": o.submitEvery = Int(value(a)) ?? -1
        default:
            FileHandle.standardError.write(
                Data(
                    "fwp-load: unknown option \(a)\nusage: fwp-load --endpoint E --job N [--clients 32] [--seconds 30] [--rate R] [--key-prefix P] [--submit-every N]\n"
                        .utf8))
            exit(2)
        }
    }
    guard !o.endpoint.isEmpty, o.job > 0, o.clients > 0, o.seconds > 0, o.rate >= 0, o.submitEvery >= 0 else {
        FileHandle.standardError.write(
            Data(
                "fwp-load: --endpoint and a positive --job are required; clients, seconds > 0; rate, submit-every ≥ 0\n"
                    .utf8))
        exit(2)
    }
    return o
}

final class ClientResult: @unchecked Sendable {
    var status: [Double] = []
    var submit: [Double] = []
    var failed = 0
    var lost = 0
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func runClient(_ o: Options, context: ZMQContext, index: Int, into r: ClientResult) {
    func connect() -> ZMQSocket {
        let s = try! context.socket(.dealer)
        try! s.connect(o.endpoint)
        return s
    }
    var socket = connect()
    let version = Array(FWPWire.version.utf8)
    let statusBody = Array("{\"job\":\(o.job)}".utf8)
    let start = now()
    let end = start + o.seconds
    var n = 0
    while now() < end {
        if o.rate > 0 {
            // Clients are spread over the period (client i starts i/clients of it late), so the
            // daemon sees a steady stream rather than 32 requests at the same instant.
            let delay = start + (Double(n) + Double(index) / Double(o.clients)) / o.rate - now()
            if delay > 0 { usleep(useconds_t(delay * 1e6)) }
        }
        let isSubmit = o.submitEvery > 0 && n % o.submitEvery == o.submitEvery - 1
        let frames: [[UInt8]] =
            isSubmit
            ? [
                version, Array("submit".utf8),
                Array(
                    "{\"task\":\"retrieval\",\"parameters\":{\"keys\":4,\"max_steps\":1},\"priority\":-1,\"idempotency_key\":\"\(o.keyPrefix)-\(index)-\(n)\"}"
                        .utf8),
            ] : [version, Array("status".utf8), statusBody]
        let t0 = now()
        n += 1
        do {
            try socket.send(frames)
            if let reply = try socket.receive(timeoutMilliseconds: 10_000) {
                let dt = now() - t0
                if reply.count >= 2, reply[1] == Array("ok".utf8) {
                    if isSubmit { r.submit.append(dt) } else { r.status.append(dt) }
                } else {
                    r.failed += 1
                }
            } else {
                r.lost += 1
                socket.close()
                socket = connect()
            }
        } catch {
            r.failed += 1
        }
    }
    socket.close()
}

func quantile(_ xs: [Double], _ q: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count - 1) * q).rounded()))]
}

let options = parseOptions()
let context = try ZMQContext()
let results = (0..<options.clients).map { _ in ClientResult() }
let group = DispatchGroup()
let started = now()
for i in 0..<options.clients {
    group.enter()
    Thread.detachNewThread {
        runClient(options, context: context, index: i, into: results[i])
        group.leave()
    }
}
group.wait()
let elapsed = now() - started
var usage = rusage()
getrusage(RUSAGE_SELF.rawValue, &usage)
let cpu =
    Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) * 1e-6 + Double(usage.ru_stime.tv_sec) + Double(
        usage.ru_stime.tv_usec) * 1e-6
let status = results.flatMap(\.status), submit = results.flatMap(\.submit)
let out: JSONValue = .object([
    "clients": .number(Double(options.clients)), "seconds": .number(elapsed), "rate": .number(options.rate),
    "status": .object([
        "count": .number(Double(status.count)), "p50_ms": .number(quantile(status, 0.5) * 1000),
        "p99_ms": .number(quantile(status, 0.99) * 1000),
    ]),
    "submit": .object([
        "count": .number(Double(submit.count)), "p50_ms": .number(quantile(submit, 0.5) * 1000),
        "p99_ms": .number(quantile(submit, 0.99) * 1000),
    ]),
    "failed": .number(Double(results.map(\.failed).reduce(0, +))),
    "lost": .number(Double(results.map(\.lost).reduce(0, +))),
    "cpu_seconds": .number(cpu),
])
print(out.jsonText)
context.terminate()
