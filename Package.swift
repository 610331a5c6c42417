// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "fwp",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "FWPCore", targets: ["FWPCore"]),
        .library(name: "FWPTasks", targets: ["FWPTasks"]),
        .executable(name: "fwp-task", targets: ["fwp-task"]),
        .executable(name: "fwpd", targets: ["fwpd"]),
        .executable(name: "fwpctl", targets: ["fwpctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", exact: "0.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1"),
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
        .systemLibrary(
            name: "CMPI",
            path: "Sources/CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        .target(name: "CKernels", exclude: ["README.md"]),
        .target(name: "CSpawn"),
        .target(
            name: "FWPCore",
            dependencies: ["CBLAS", "CKernels"]
        ),
        .target(name: "FWPProtocol"),
        .target(name: "FWPConsole", dependencies: ["FWPProtocol"]),
        .target(name: "FWPTasks", dependencies: ["FWPCore", "FWPProtocol", "CSpawn"]),
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"]),
        .target(name: "FWPMPI", dependencies: ["CMPI"]),
        .target(
            name: "FWPStore",
            dependencies: [
                "FWPProtocol", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        .target(
            name: "FWPDaemon",
            dependencies: [
                "FWPCore", "FWPTasks", "FWPStore", "FWPProtocol", "ZeroMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .executableTarget(
            name: "fwpd",
            dependencies: [
                "FWPDaemon", "FWPCore", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "fwpctl",
            dependencies: [
                "FWPProtocol", "FWPConsole", "ZeroMQ",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "fwp-task", dependencies: ["FWPCore", "FWPTasks", "FWPConsole", "FWPMPI", "CSpawn", "ZeroMQ"]),
        .executableTarget(
            name: "fwp-bench", dependencies: ["FWPCore", "FWPMPI", "FWPTasks"], path: "Benchmarks/FWPBench"),
        .executableTarget(name: "fwp-load", dependencies: ["FWPProtocol", "ZeroMQ"], path: "Benchmarks/FWPLoad"),
        .testTarget(name: "FWPCoreTests", dependencies: ["FWPCore", "CKernels"], exclude: ["Fixtures"]),
        .testTarget(name: "FWPProtocolTests", dependencies: ["FWPProtocol"]),
        .testTarget(name: "FWPConsoleTests", dependencies: ["FWPConsole", "FWPProtocol"]),
        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ", "CZeroMQ"]),
        .testTarget(name: "FWPStoreTests", dependencies: ["FWPStore", "FWPProtocol"]),
        .testTarget(name: "FWPTasksTests", dependencies: ["FWPTasks", "FWPCore"]),
        .testTarget(
            name: "FWPDaemonTests",
            dependencies: ["FWPDaemon", "FWPTasks", "FWPStore", "FWPProtocol", "ZeroMQ", "FWPCore", "CSpawn"]),
    ],
    swiftLanguageModes: [.v6]
)
