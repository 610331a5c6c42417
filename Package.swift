// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "fwp",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "FWPCore", targets: ["FWPCore"]),
        .library(name: "FWPTasks", targets: ["FWPTasks"]),
        .executable(name: "fwp-task", targets: ["fwp-task"]),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS",
            path: "Sources/CBLAS",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CZeroMQ",
            path: "Sources/CZeroMQ",
            providers: [.apt(["libzmq3-dev"])]
        ),
        .target(
            name: "FWPCore",
            dependencies: ["CBLAS"]
        ),
        .target(name: "FWPTasks", dependencies: ["FWPCore"]),
        .executableTarget(name: "fwp-task", dependencies: ["FWPCore", "FWPTasks"]),
        .executableTarget(name: "fwp-bench", dependencies: ["FWPCore"], path: "Benchmarks/FWPBench"),
        .testTarget(
            name: "FWPCoreTests",
            dependencies: ["FWPCore", "CZeroMQ"],
            exclude: ["Fixtures"]
        ),
        .testTarget(name: "FWPTasksTests", dependencies: ["FWPTasks", "FWPCore"]),
    ],
    swiftLanguageModes: [.v6]
)
