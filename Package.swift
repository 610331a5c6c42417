// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "fwp",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "FWPCore", targets: ["FWPCore"]),
        .executable(name: "fwp-train", targets: ["fwp-train"]),
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
        .executableTarget(name: "fwp-train", dependencies: ["FWPCore"]),
        .executableTarget(name: "fwp-bench", dependencies: ["FWPCore"], path: "Benchmarks/FWPBench"),
        .testTarget(
            name: "FWPCoreTests",
            dependencies: ["FWPCore", "CZeroMQ"],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
