#include "store.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "crc32.hpp"
#include "kernels.hpp"

namespace cedstore {

namespace {

uint64_t regular_file_size(int fd, const std::string& path) {
    struct stat st;
    if (::fstat(fd, &st) != 0) fail_os("fstat", path);
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        fail_os("", path);
    }
    if (!S_ISREG(st.st_mode)) fail(ErrorKind::kFormat, path, ": not a cedstore file: not a regular file");
    return static_cast<uint64_t>(st.st_size);
}

}  // namespace

std::pair<std::shared_ptr<Mapping>, Header> open_store(const std::string& path, bool writable) {
    Fd f{::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)};
    if (f.fd < 0) fail_os("", path);
    const uint64_t size = regular_file_size(f.fd, path);
    if (size < kHeaderSize) parse_header(nullptr, size, path);  // throws before reading
    auto map = std::make_shared<Mapping>(f.fd, size, writable, path);
    const Header h = parse_header(map->data(), size, path);
    check_sections(map->data(), h, path);
    return {std::move(map), h};
}

// ---------------------------------------------------------------------------------------------
// Mapping

Mapping::Mapping(int fd, uint64_t size, bool writable, const std::string& path) : size_(size), path_(path) {
    void* p = ::mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail_os("mmap", path);
    data_ = static_cast<uint8_t*>(p);
}

Mapping::~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
}

void Mapping::sync(uint64_t offset, uint64_t length) const {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    if (::msync(data_ + start, offset + length - start, MS_SYNC) != 0) fail_os("msync", path_);
}

// ---------------------------------------------------------------------------------------------
// Store

Store::Store(std::string path, std::shared_ptr<Mapping> map, const Header& h)
    : path_(std::move(path)), map_(std::move(map)), h_(h) {}

std::pair<uint32_t, uint32_t> Store::epoch_entry(uint32_t epoch) const {
    // One 8-byte atomic load: a writer in another process replaces (state, crc) as a whole.
    const auto* p = reinterpret_cast<const uint64_t*>(map_->data() + h_.epoch_table_offset + 8 * epoch);
    const uint64_t v = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    return {static_cast<uint32_t>(v), static_cast<uint32_t>(v >> 32)};
}

std::string Store::metadata() const {
    return std::string(reinterpret_cast<const char*>(map_->data() + h_.metadata_offset), h_.metadata_length);
}

const uint8_t* Store::epoch_records(int64_t epoch) const {
    if (epoch < 0 || epoch >= static_cast<int64_t>(h_.num_epochs))
        fail(ErrorKind::kIndex, path_, ": epoch ", epoch, " out of range [0, ", h_.num_epochs, ")");
    return map_->data() + h_.records_offset + static_cast<uint64_t>(epoch) * h_.epoch_bytes();
}

void Store::check_ids(int64_t epoch, const int64_t* ids, size_t n) const {
    const uint64_t num_samples = h_.num_samples;
    for (size_t r = 0; r < n; ++r)
        if (static_cast<uint64_t>(ids[r]) >= num_samples)  // negative ids wrap to huge values
            fail(ErrorKind::kIndex, path_, ": epoch ", epoch, ": sample id ", ids[r], " (row ", r,
                 ") out of range [0, ", num_samples, ")");
}

void Store::written(int64_t epoch, bool* out) const {
    const uint8_t* base = epoch_records(epoch);
    for (uint64_t i = 0; i < h_.num_samples; ++i) out[i] = record_written(base + i * h_.record_size, h_.k);
}

// ---------------------------------------------------------------------------------------------
// Reader

Reader::Reader(const std::string& path) : Store(path, nullptr, Header{}) {
    auto opened = open_store(path, false);
    map_ = std::move(opened.first);
    h_ = opened.second;
}

void Reader::fail_record(int64_t epoch, int64_t id, int status, uint32_t pos, const uint8_t* rec) const {
    if (status == static_cast<int>(RecordStatus::kUnwritten))
        fail(ErrorKind::kUnwritten, path_, ": epoch ", epoch, ", sample ", id, ": record not written");
    fail(ErrorKind::kIntegrity, path_, ": epoch ", epoch, ", sample ", id, ": class index ",
         load<int16_t>(rec + 2 * h_.k + 2 * pos), " at position ", pos, " outside [0, ", h_.num_classes,
         ") (the record is corrupted)");
}

// Calls decode(r, rec) for every r in [0, n), rec a copy of record (epoch, ids[r]); decode
// returns a RecordStatus and sets pos for kBadIndex. Random ids miss the caches and the TLB:
// copying a chunk of records first issues their loads back to back, so the misses overlap,
// and the decode then reads from L1.
template <class Decode>
void Reader::for_each_record(int64_t epoch, const int64_t* ids, size_t n, Decode&& decode) const {
    const uint8_t* base = epoch_records(epoch);
    check_ids(epoch, ids, n);
    const uint32_t k = h_.k, rs = h_.record_size;
    alignas(64) uint8_t stack[4096];  // 32 records of k <= 31 fit: no allocation per call
    const size_t chunk = std::max<size_t>(1, std::min<size_t>(32, sizeof stack / rs));
    std::vector<uint8_t> heap(rs > sizeof stack ? rs : 0);
    uint8_t* local = heap.empty() ? stack : heap.data();
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        const size_t m = std::min(chunk, n - r0);
        for (size_t j = 0; j < m; ++j) {
            // Precondition: 0 <= ids[r] < N (check_ids), so each record lies inside the mapping.
            // The marker indices[0] is read first (acquire; a writer stores it last, release), so
            // a record written concurrently is seen either unwritten or whole.
            const uint8_t* src = base + ids[r0 + j] * rs;
            const int16_t marker = __atomic_load_n(reinterpret_cast<const int16_t*>(src + 2 * k), __ATOMIC_ACQUIRE);
            std::memcpy(&local[j * rs], src, rs);
            store<int16_t>(&local[j * rs + 2 * k], marker);
        }
        for (size_t j = 0; j < m; ++j) {
            uint32_t pos = 0;
            const RecordStatus st = decode(r0 + j, &local[j * rs], &pos);
            if (st != RecordStatus::kOk) fail_record(epoch, ids[r0 + j], static_cast<int>(st), pos, &local[j * rs]);
        }
    }
}

void Reader::decode_dense(int64_t epoch, const int64_t* ids, size_t n, float fill, float* out,
                          int32_t* seeds) const {
    const uint32_t k = h_.k, c = h_.num_classes;
    const bool zero_fill = f32_bits(fill) == 0;
    for_each_record(epoch, ids, n, [&](size_t r, const uint8_t* rec, uint32_t* pos) {
        return decode_dense_record(rec, k, c, fill, zero_fill, out + r * c, seeds + r, pos);
    });
}

void Reader::decode_topk(int64_t epoch, const int64_t* ids, size_t n, float* values, int64_t* indices,
                         int32_t* seeds) const {
    const uint32_t k = h_.k, c = h_.num_classes;
    for_each_record(epoch, ids, n, [&](size_t r, const uint8_t* rec, uint32_t* pos) {
        return decode_topk_record(rec, k, c, values + r * k, indices + r * k, seeds + r, pos);
    });
}

void Reader::verify(bool require_complete) const {
    const uint32_t k = h_.k, c = h_.num_classes;
    std::vector<uint64_t> stamp(c, 0);  // stamp[cls] == record number + 1: cls seen in this record
    uint64_t record_number = 0;
    for (uint32_t e = 0; e < h_.num_epochs; ++e) {
        const auto [state, crc] = epoch_entry(e);
        const bool sealed = state == kEpochSealed;
        const uint8_t* base = epoch_records(e);
        for (uint64_t i = 0; i < h_.num_samples; ++i) {
            const uint8_t* rec = base + i * h_.record_size;
            const auto bad = [&](auto... parts) {
                fail(ErrorKind::kIntegrity, path_, ": epoch ", e, ", sample ", i, ": ", parts...);
            };
            ++record_number;
            if (!record_written(rec, k)) {
                if (sealed) bad("record not written in a sealed epoch");
                if (require_complete) fail(ErrorKind::kUnwritten, path_, ": epoch ", e, ", sample ", i, ": record not written");
                continue;
            }
            float previous = 0.0f;
            for (uint32_t j = 0; j < k; ++j) {
                const uint16_t cls = load<uint16_t>(rec + 2 * k + 2 * j);
                if (cls >= c)
                    bad("class index ", static_cast<int16_t>(cls), " at position ", j, " outside [0, ", c, ")");
                if (stamp[cls] == record_number) bad("class index ", cls, " appears twice");
                stamp[cls] = record_number;
                const uint16_t bits = load<uint16_t>(rec + 2 * j);
                if (!f16_is_finite(bits)) bad("value at position ", j, " is not finite");
                const float v = f16_to_f32(bits);
                if (j > 0 && v > previous)
                    bad("values are not non-increasing: ", previous, " at position ", j - 1, ", then ", v);
                previous = v;
            }
        }
        if (sealed) {
            const uint32_t actual = crc32(base, h_.epoch_bytes());
            if (actual != crc)
                fail(ErrorKind::kIntegrity, path_, ": epoch ", e, ": CRC mismatch: sealed with ", hex32(crc), ", records have ",
                     hex32(actual), " (the epoch is corrupted)");
        }
    }
}

}  // namespace cedstore
