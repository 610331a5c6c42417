import Crypto
import Foundation

/// The checksum the store records for every checkpoint file and checks before a file is used.
public enum Digest {
    /// SHA-256 of `data` as 64 lowercase hexadecimal digits (swift-crypto).
    public static func sha256Hex(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }
}
