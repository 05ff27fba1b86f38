// FORMAT.md in code: the constants, the 128-byte header, and the checks a reader makes at open.
// Mirrors cedstore/format.py (a test checks the constants agree).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "error.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "cedstore stores little-endian data in place");

namespace cedstore {

inline constexpr char kMagic[9] = "CEDSTORE";  // 8 bytes on disk, no terminator
inline constexpr uint32_t kFormatVersion = 1;       // the major version: a reader refuses others
inline constexpr uint32_t kFormatMinorVersion = 2;  // what this cedstore writes; it reads every 1.x
inline constexpr uint64_t kMaxMetadataLength = uint64_t{16} << 20;
inline constexpr uint32_t kHeaderSize = 128;
inline constexpr uint64_t kRecordsAlign = 4096;
inline constexpr uint64_t kSectionAlign = 8;
inline constexpr uint32_t kMaxClasses = 32767;           // int16 class indices (index_width 0)
inline constexpr uint32_t kMaxClassesWide = uint32_t{1} << 24;  // int32 class indices (index_width 4)
inline constexpr int16_t kUnwrittenIndex = -1;
inline constexpr uint32_t kIndexWidthWide = 4;       // header index_width of int32 indices; 0 is int16
inline constexpr uint16_t kWideIndexMinorVersion = 2;  // before 1.2, bytes 44-47 are reserved0 (zero)

// Where the fields of a record lie (FORMAT.md, "Records"): values f16[k] at 0; class indices
// i16[k] at 2k, or i32[k] at 4*ceil(k/2) (zero padding between, so that every 4-byte word is
// aligned); the seed i32 after the indices. Every record_size is a multiple of 4.
struct RecordLayout {
    uint32_t k = 0;
    bool wide = false;            // int32 class indices
    uint32_t indices_offset = 0;  // bytes
    uint32_t size = 0;            // record_size
    uint32_t index_bytes() const { return wide ? 4 : 2; }
    uint32_t seed_offset() const { return indices_offset + index_bytes() * k; }
    uint32_t words() const { return size / 4; }
};
// Precondition: k <= kMaxClassesWide (no overflow).
inline RecordLayout record_layout(uint32_t k, bool wide) {
    RecordLayout l;
    l.k = k;
    l.wide = wide;
    l.indices_offset = wide ? 4 * ((k + 1) / 2) : 2 * k;
    l.size = l.indices_offset + l.index_bytes() * k + 4;
    return l;
}
inline uint32_t max_classes(bool wide) { return wide ? kMaxClassesWide : kMaxClasses; }
inline constexpr uint32_t kEpochOpen = 0;
inline constexpr uint32_t kEpochSealed = 1;

struct Header {
    uint16_t version = kFormatVersion;
    uint16_t version_minor = kFormatMinorVersion;
    uint32_t header_size = kHeaderSize;
    uint32_t k = 0;
    uint32_t num_classes = 0;
    uint64_t num_samples = 0;
    uint32_t num_epochs = 0;
    uint32_t record_size = 0;
    uint32_t value_kind = 0;
    uint32_t index_width = 0;  // 0: int16 class indices; 4: int32 (1.2+; reserved0 before)
    uint64_t metadata_offset = kHeaderSize;
    uint64_t metadata_length = 0;
    uint64_t keys_offset = 0;
    uint64_t keys_length = 0;
    uint64_t epoch_table_offset = 0;
    uint64_t epoch_table_length = 0;
    uint64_t records_offset = 0;
    uint64_t records_length = 0;
    uint32_t sections_crc = 0;  // 1.1+: CRC-32 of bytes [128, epoch_table_offset)

    uint64_t file_size() const { return records_offset + records_length; }  // checked at make/parse
    uint64_t epoch_bytes() const { return num_samples * record_size; }
    bool has_keys() const { return keys_length != 0; }
    bool has_sections_crc() const { return version_minor >= 1; }
    bool wide() const { return index_width == kIndexWidthWide; }
    RecordLayout layout() const { return record_layout(k, wide()); }
};

// Little-endian loads and stores at any alignment.
template <class T>
inline T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}
template <class T>
inline void store(uint8_t* p, T v) {
    std::memcpy(p, &v, sizeof(T));
}

// Python's repr of a UTF-8 string, for keys in messages: 'a\x00'.
std::string str_repr(const std::string& utf8);

// "0x0123abcd", for CRCs in messages.
inline std::string hex32(uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    std::string out = "0x00000000";
    for (int i = 9; i >= 2; --i, v >>= 4) out[i] = digits[v & 0xfu];
    return out;
}

// Length of a key table for n keys whose concatenation is blob_length bytes; false on overflow.
bool key_table_length(uint64_t n, uint64_t blob_length, uint64_t* out);

// A header for new file with every offset laid out per FORMAT.md. Throws InvalidInputError
// for shapes out of range (index_width 0 or 4) or a file size that overflows 64 bits.
Header make_header(uint32_t k, uint32_t num_classes, uint64_t num_samples, uint32_t num_epochs,
                   uint32_t value_kind, uint64_t metadata_length, uint64_t keys_length, uint32_t index_width);

// Serialises h into out[0, 128), header CRC included (sections_crc as h holds it).
void encode_header(const Header& h, uint8_t* out);

// Checks data[0, file_size) in FORMAT.md's order: size, magic, version, header CRC, fields,
// sections against the file size. Throws FormatError / UnsupportedVersionError naming path.
Header parse_header(const uint8_t* data, uint64_t file_size, const std::string& path);

// After parse_header: zero gaps, epoch table states, the metadata and key table CRC (1.1+),
// and the key table (ends, UTF-8, order).
void check_sections(const uint8_t* data, const Header& h, const std::string& path);

// CRC-32 of the bytes the header's sections_crc covers: metadata, key table and their gaps.
uint32_t sections_crc(const uint8_t* data, const Header& h);

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), like Python's.
bool utf8_valid(const uint8_t* p, size_t n);

// A view of a key table in memory. Precondition: check_sections accepted it.
struct KeyTable {
    const uint8_t* base = nullptr;  // data + keys_offset
    uint64_t n = 0;

    uint64_t end(uint64_t i) const { return load<uint64_t>(base + 16 + 8 * i); }
    uint64_t order(uint64_t j) const { return load<uint64_t>(base + 24 + 8 * n + 8 * j); }
    const uint8_t* blob() const { return base + 24 + 16 * n; }
    std::string key(uint64_t i) const {
        const uint64_t b = end(i);
        return std::string(reinterpret_cast<const char*>(blob() + b), end(i + 1) - b);
    }
    // Sample id of `key`, or -1: a binary search over order.
    int64_t lookup(const std::string& key) const;
};

}  // namespace cedstore
