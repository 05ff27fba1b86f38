#include "format.hpp"

#include <cstdio>
#include <cstring>
#include <vector>

#include "crc32.hpp"

namespace cedstore {

namespace {

bool add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool align_up(uint64_t x, uint64_t a, uint64_t* out) {  // a is a power of two
    return add(x, a - 1, out) && ((*out &= ~(a - 1)), true);
}

// The offsets that follow from the shape and the two variable lengths; false on overflow.
struct Layout {
    uint64_t keys_offset, epoch_table_offset, epoch_table_length, records_offset, records_length;
};
bool lay_out(const Header& h, Layout* l) {
    uint64_t metadata_end, keys_end, table_end, num_records;
    return add(kHeaderSize, h.metadata_length, &metadata_end) &&
           align_up(metadata_end, kSectionAlign, &l->keys_offset) &&
           add(l->keys_offset, h.keys_length, &keys_end) &&
           align_up(keys_end, kSectionAlign, &l->epoch_table_offset) &&
           mul(8, h.num_epochs, &l->epoch_table_length) &&
           add(l->epoch_table_offset, l->epoch_table_length, &table_end) &&
           align_up(table_end, kRecordsAlign, &l->records_offset) &&
           mul(h.num_samples, h.num_epochs, &num_records) &&
           mul(num_records, h.record_size, &l->records_length) &&
           add(l->records_offset, l->records_length, &table_end);  // the file size fits
}

// A message for the first shape field out of range, or "" when all are fine. index_width is
// checked first: the class limit depends on it.
std::string shape_problem(uint32_t k, uint32_t c, uint64_t n, uint32_t e, uint32_t value_kind, uint32_t index_width) {
    const auto s = [](auto... parts) {
        std::string out;
        ((out += parts), ...);
        return out;
    };
    using std::to_string;
    if (index_width != 0 && index_width != kIndexWidthWide)
        return s("index_width: expected 0 (int16 class indices) or 4 (int32 class indices), found ", to_string(index_width));
    const uint32_t max_c = max_classes(index_width == kIndexWidthWide);
    if (c < 1 || c > max_c)
        return s("num_classes: expected 1 <= num_classes <= ", to_string(max_c), ", found ", to_string(c));
    if (k < 1 || k > c)
        return s("k: expected 1 <= k <= num_classes (", to_string(c), "), found ", to_string(k));
    if (n < 1) return "num_samples: expected >= 1, found 0";
    if (e < 1) return "num_epochs: expected >= 1, found 0";
    if (value_kind > 1) return s("value_kind: expected 0 (probability) or 1 (logit), found ", to_string(value_kind));
    return "";
}

// Python's repr of a bytes object, for messages: b'\x89PNG\r\n', or b"it's" (double quotes
// when there is a ' and no ").
std::string bytes_repr(const uint8_t* p, size_t n) {
    const bool has_single = std::memchr(p, '\'', n) != nullptr, has_double = std::memchr(p, '"', n) != nullptr;
    const char quote = has_single && !has_double ? '"' : '\'';
    std::string out = std::string("b") + quote;
    for (size_t i = 0; i < n; ++i) {
        const uint8_t c = p[i];
        if (c == '\t') out += "\\t";
        else if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (c == quote || c == '\\') out += std::string("\\") + static_cast<char>(c);
        else if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
        else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    return out + quote;
}

bool all_zero(const uint8_t* p, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i)
        if (p[i] != 0) return false;
    return true;
}

int compare_keys(const KeyTable& t, uint64_t a, uint64_t b) {
    const uint64_t la = t.end(a + 1) - t.end(a), lb = t.end(b + 1) - t.end(b);
    const int c = std::memcmp(t.blob() + t.end(a), t.blob() + t.end(b), la < lb ? la : lb);
    return c != 0 ? c : (la < lb ? -1 : (la > lb ? 1 : 0));
}

void check_key_table(const uint8_t* data, const Header& h, const std::string& path) {
    const uint8_t* base = data + h.keys_offset;
    const auto bad = [&](auto... parts) { fail(ErrorKind::kFormat, path, ": key table: ", parts...); };
    if (h.keys_length < 16) bad("expected at least 16 bytes, found ", h.keys_length);
    const uint64_t n = load<uint64_t>(base), blob_length = load<uint64_t>(base + 8);
    if (n != h.num_samples) bad("num_keys: expected num_samples (", h.num_samples, "), found ", n);
    uint64_t expected;
    if (!key_table_length(n, blob_length, &expected) || expected != h.keys_length)
        bad("length: expected 16 + 16*num_samples + 8 + blob_length (blob_length ", blob_length,
            ") = keys_length (", h.keys_length, ")");
    const KeyTable t{base, n};
    if (t.end(0) != 0) bad("ends[0]: expected 0, found ", t.end(0));
    if (t.end(n) != blob_length) bad("ends[", n, "]: expected blob_length (", blob_length, "), found ", t.end(n));
    for (uint64_t i = 0; i < n; ++i) {
        // Preconditions for the key's bytes: ends[i] < ends[i+1] <= ends[n] = blob_length.
        if (t.end(i + 1) <= t.end(i)) {
            if (t.end(i + 1) == t.end(i)) bad("key of sample ", i, " is empty");
            bad("ends must be non-decreasing, found ends[", i, "] = ", t.end(i), " > ends[", i + 1, "] = ", t.end(i + 1));
        }
        if (t.end(i + 1) > blob_length) bad("ends[", i + 1, "] = ", t.end(i + 1), " exceeds blob_length ", blob_length);
        if (!utf8_valid(t.blob() + t.end(i), t.end(i + 1) - t.end(i)))
            bad("key of sample ", i, " is not valid UTF-8");
    }
    std::vector<bool> seen(n, false);
    for (uint64_t j = 0; j < n; ++j) {
        const uint64_t id = t.order(j);
        if (id >= n) bad("order[", j, "] = ", id, " is not a sample id (expected < ", n, ")");
        if (seen[id]) bad("order lists sample ", id, " twice");
        seen[id] = true;
        if (j == 0) continue;
        const int c = compare_keys(t, t.order(j - 1), id);
        if (c == 0) bad("duplicate key ", str_repr(t.key(id)), " (samples ", t.order(j - 1), " and ", id, ")");
        if (c > 0) bad("order is not sorted by key: ", str_repr(t.key(t.order(j - 1))), " (sample ", t.order(j - 1),
                       ") comes before ", str_repr(t.key(id)), " (sample ", id, ")");
    }
}

}  // namespace

// Python's repr of a str given as valid UTF-8, for messages: quotes and escapes as Python
// chooses them for code points below U+0100; other code points are copied (a message never
// carries a raw NUL, which would cut it short).
std::string str_repr(const std::string& utf8) {
    const bool single = utf8.find('\'') == std::string::npos || utf8.find('"') != std::string::npos;
    const char quote = single ? '\'' : '"';
    std::string out(1, quote);
    for (size_t i = 0; i < utf8.size(); ++i) {
        uint32_t c = static_cast<uint8_t>(utf8[i]);
        bool escape = c < 0x20 || c == 0x7f;
        if (c == 0xc2 && i + 1 < utf8.size()) {  // U+0080..U+00BF: C1 controls, NBSP and SHY are escaped
            const uint32_t cp = static_cast<uint8_t>(utf8[i + 1]);
            if (cp <= 0xa0 || cp == 0xad) c = cp, ++i, escape = true;
        }
        if (c == '\\' || c == static_cast<uint8_t>(quote)) out += '\\', out += static_cast<char>(c);
        else if (c == '\t') out += "\\t";
        else if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (escape) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else out += static_cast<char>(c);
    }
    return out + quote;
}

bool key_table_length(uint64_t n, uint64_t blob_length, uint64_t* out) {
    uint64_t words;  // 2 counts + (n + 1) ends + n order entries
    return mul(n, 2, &words) && add(words, 3, &words) && mul(words, 8, &words) && add(words, blob_length, out);
}

Header make_header(uint32_t k, uint32_t num_classes, uint64_t num_samples, uint32_t num_epochs,
                   uint32_t value_kind, uint64_t metadata_length, uint64_t keys_length, uint32_t index_width) {
    const std::string problem = shape_problem(k, num_classes, num_samples, num_epochs, value_kind, index_width);
    if (!problem.empty()) fail(ErrorKind::kInvalidInput, problem);
    if (metadata_length < 2 || metadata_length > kMaxMetadataLength)
        fail(ErrorKind::kInvalidInput, "metadata: expected a JSON object of 2 to ", kMaxMetadataLength, " bytes, found ",
             metadata_length, " bytes");
    Header h;
    h.k = k;
    h.num_classes = num_classes;
    h.num_samples = num_samples;
    h.num_epochs = num_epochs;
    h.index_width = index_width;
    h.record_size = h.layout().size;
    h.value_kind = value_kind;
    h.metadata_length = metadata_length;
    h.keys_length = keys_length;
    Layout l;
    if (!lay_out(h, &l))
        fail(ErrorKind::kInvalidInput, "a store of ", num_epochs, " epochs x ", num_samples, " samples x ",
             h.record_size, " bytes does not fit in a 64-bit file size");
    h.keys_offset = l.keys_offset;
    h.epoch_table_offset = l.epoch_table_offset;
    h.epoch_table_length = l.epoch_table_length;
    h.records_offset = l.records_offset;
    h.records_length = l.records_length;
    return h;
}

void encode_header(const Header& h, uint8_t* out) {
    std::memset(out, 0, kHeaderSize);
    std::memcpy(out, kMagic, 8);
    store<uint16_t>(out + 8, h.version);
    store<uint16_t>(out + 10, h.version_minor);
    store<uint32_t>(out + 12, h.header_size);
    store<uint32_t>(out + 16, h.k);
    store<uint32_t>(out + 20, h.num_classes);
    store<uint64_t>(out + 24, h.num_samples);
    store<uint32_t>(out + 32, h.num_epochs);
    store<uint32_t>(out + 36, h.record_size);
    store<uint32_t>(out + 40, h.value_kind);
    store<uint32_t>(out + 44, h.index_width);
    store<uint64_t>(out + 48, h.metadata_offset);
    store<uint64_t>(out + 56, h.metadata_length);
    store<uint64_t>(out + 64, h.keys_offset);
    store<uint64_t>(out + 72, h.keys_length);
    store<uint64_t>(out + 80, h.epoch_table_offset);
    store<uint64_t>(out + 88, h.epoch_table_length);
    store<uint64_t>(out + 96, h.records_offset);
    store<uint64_t>(out + 104, h.records_length);
    store<uint32_t>(out + 112, h.sections_crc);
    store<uint32_t>(out + 124, crc32(out, 124));
}

Header parse_header(const uint8_t* data, uint64_t file_size, const std::string& path) {
    const auto bad = [&](auto... parts) { fail(ErrorKind::kFormat, path, ": ", parts...); };
    if (file_size < kHeaderSize)
        bad("not a cedstore file: expected at least ", kHeaderSize, " bytes, found ", file_size);
    if (std::memcmp(data, kMagic, 8) != 0)
        bad("not a cedstore file: expected magic b'CEDSTORE', found ", bytes_repr(data, 8));
    Header h;
    h.version = load<uint16_t>(data + 8);
    h.version_minor = load<uint16_t>(data + 10);
    if (h.version != kFormatVersion)  // any minor version of a known major is readable
        fail(ErrorKind::kUnsupportedVersion, path, ": format version ", h.version, ", this cedstore reads version ",
             kFormatVersion, " (a newer cedstore may read it)");
    const uint32_t stored_crc = load<uint32_t>(data + 124), crc = crc32(data, 124);
    if (stored_crc != crc)
        bad("header CRC mismatch: stored ", hex32(stored_crc), ", computed ", hex32(crc), " (the header is corrupted)");
    h.header_size = load<uint32_t>(data + 12);
    h.k = load<uint32_t>(data + 16);
    h.num_classes = load<uint32_t>(data + 20);
    h.num_samples = load<uint64_t>(data + 24);
    h.num_epochs = load<uint32_t>(data + 32);
    h.record_size = load<uint32_t>(data + 36);
    h.value_kind = load<uint32_t>(data + 40);
    h.index_width = load<uint32_t>(data + 44);
    h.metadata_offset = load<uint64_t>(data + 48);
    h.metadata_length = load<uint64_t>(data + 56);
    h.keys_offset = load<uint64_t>(data + 64);
    h.keys_length = load<uint64_t>(data + 72);
    h.epoch_table_offset = load<uint64_t>(data + 80);
    h.epoch_table_length = load<uint64_t>(data + 88);
    h.records_offset = load<uint64_t>(data + 96);
    h.records_length = load<uint64_t>(data + 104);
    if (h.has_sections_crc()) h.sections_crc = load<uint32_t>(data + 112);

    if (h.header_size != kHeaderSize) bad("header field header_size: expected 128, found ", h.header_size);
    // Bytes 44-47 were reserved0 (zero) before 1.2: a wide file of an older minor version is corrupt.
    if (h.version_minor < kWideIndexMinorVersion && h.index_width != 0)
        bad("header field reserved0: expected 0, found ", h.index_width);
    const std::string problem =
        shape_problem(h.k, h.num_classes, h.num_samples, h.num_epochs, h.value_kind, h.index_width);
    if (!problem.empty()) bad("header field ", problem);
    const uint32_t record_size = h.layout().size;  // k <= C <= 2^24: no overflow
    if (h.record_size != record_size)
        bad("header field record_size: expected ", h.wide() ? "4*ceil(k/2) + 4*k + 4 = " : "4*k + 4 = ", record_size,
            ", found ", h.record_size);
    if (h.metadata_offset != kHeaderSize) bad("header field metadata_offset: expected 128, found ", h.metadata_offset);
    if (h.metadata_length < 2) bad("header field metadata_length: expected >= 2, found ", h.metadata_length);
    // Reserved bytes are checked only up to the minor version this reader knows: a newer minor
    // version may use them for fields this reader ignores (FORMAT.md, "Versions").
    const uint64_t reserved_at = h.has_sections_crc() ? 116 : 112, reserved_length = 124 - reserved_at;
    if (h.version_minor <= kFormatMinorVersion && !all_zero(data + reserved_at, reserved_length))
        bad("header field reserved1: expected ", reserved_length, " zero bytes, found ",
            bytes_repr(data + reserved_at, reserved_length));

    Layout l;
    if (!lay_out(h, &l)) bad("header sizes overflow 64 bits (the header is corrupted)");
    const auto expect = [&](const char* field, uint64_t expected, uint64_t found) {
        if (expected != found) bad("header field ", field, ": expected ", expected, ", found ", found);
    };
    expect("keys_offset", l.keys_offset, h.keys_offset);
    expect("epoch_table_offset", l.epoch_table_offset, h.epoch_table_offset);
    expect("epoch_table_length", l.epoch_table_length, h.epoch_table_length);
    expect("records_offset", l.records_offset, h.records_offset);
    expect("records_length", l.records_length, h.records_length);
    if (h.file_size() != file_size) {
        if (file_size < h.file_size())
            bad("file is truncated: expected ", h.file_size(), " bytes, found ", file_size);
        bad("unexpected data after the records: expected ", h.file_size(), " bytes, found ", file_size);
    }
    return h;
}

void check_sections(const uint8_t* data, const Header& h, const std::string& path) {
    // Preconditions (parse_header): every offset below is within [0, file_size).
    const uint64_t metadata_end = kHeaderSize + h.metadata_length, keys_end = h.keys_offset + h.keys_length,
                   table_end = h.epoch_table_offset + h.epoch_table_length;
    if (!all_zero(data + metadata_end, h.keys_offset - metadata_end) ||
        !all_zero(data + keys_end, h.epoch_table_offset - keys_end) ||
        !all_zero(data + table_end, h.records_offset - table_end))
        fail(ErrorKind::kFormat, path, ": alignment gap between sections is not zero");
    for (uint32_t e = 0; e < h.num_epochs; ++e) {
        const uint32_t state = load<uint32_t>(data + h.epoch_table_offset + 8 * e);
        // The second word of an open epoch is its rewrite sequence (any value; FORMAT.md).
        if (state != kEpochOpen && state != kEpochSealed)
            fail(ErrorKind::kFormat, path, ": epoch ", e, ": state: expected 0 (open) or 1 (sealed), found ", state);
    }
    if (h.has_sections_crc()) {
        const uint32_t crc = sections_crc(data, h);
        if (crc != h.sections_crc)
            fail(ErrorKind::kFormat, path, ": metadata and key table CRC mismatch: stored ", hex32(h.sections_crc),
                 ", computed ", hex32(crc), " (the metadata or key table is corrupted)");
    }
    if (h.has_keys()) check_key_table(data, h, path);
}

uint32_t sections_crc(const uint8_t* data, const Header& h) {
    return crc32(data + kHeaderSize, h.epoch_table_offset - kHeaderSize);
}

bool utf8_valid(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;  // range of the second byte
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;       // overlong
            if (c == 0xed) hi = 0x9f;       // surrogates
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;       // overlong
            if (c == 0xf4) hi = 0x8f;       // above U+10FFFF
        } else {
            return false;
        }
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t j = 2; j < len; ++j)
            if ((p[i + j] & 0xc0) != 0x80) return false;
        i += len;
    }
    return true;
}

int64_t KeyTable::lookup(const std::string& key) const {
    uint64_t lo = 0, hi = n;  // the answer, if any, is order[j] for some j in [lo, hi)
    while (lo < hi) {
        const uint64_t mid = lo + (hi - lo) / 2, id = order(mid);
        const uint64_t b = end(id), len = end(id + 1) - b;
        const int c0 = std::memcmp(blob() + b, key.data(), len < key.size() ? len : key.size());
        const int c = c0 != 0 ? c0 : (len < key.size() ? -1 : (len > key.size() ? 1 : 0));
        if (c == 0) return static_cast<int64_t>(id);
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

}  // namespace cedstore
