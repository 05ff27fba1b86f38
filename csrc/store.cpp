#include "store.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
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

// A rewrite of a record of this epoch is under way: its rewrite sequence is odd (FORMAT.md).
bool rewriting(uint64_t entry) { return static_cast<uint32_t>(entry) == kEpochOpen && ((entry >> 32) & 1u) != 0; }

// The byte range of the writer lock, the header [0, 128), for fcntl with lock type `type`.
struct flock header_lock(short type) {
    struct flock lock = {};
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = 0;
    lock.l_len = kHeaderSize;
    return lock;
}

// Whether a writer holds the writer lock of the file open as fd (lock_for_writing).
bool writer_present(int fd) {
#ifdef F_OFD_GETLK
    struct flock lock = header_lock(F_WRLCK);
    return ::fcntl(fd, F_OFD_GETLK, &lock) != 0 || lock.l_type != F_UNLCK;  // cannot tell: assume one
#else
    if (::flock(fd, LOCK_SH | LOCK_NB) != 0) return true;
    ::flock(fd, LOCK_UN);
    return false;
#endif
}

// Copies the record at src into dst under the epoch's rewrite sequence (entry): true once a
// copy was taken with the sequence unchanged around it and even, or odd but left so by a
// writer that is gone (no one holds the writer lock: FORMAT.md, "Rewriting a record");
// false after kRewriteAttempts tries.
constexpr int kRewriteAttempts = 1000;
bool copy_settled(const uint64_t* entry, const uint8_t* src, uint32_t* dst, const RecordLayout& l, int fd) {
    for (int attempt = 0; attempt < kRewriteAttempts; ++attempt) {
        const uint64_t before = __atomic_load_n(entry, __ATOMIC_ACQUIRE);
        copy_record(src, dst, l);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (__atomic_load_n(entry, __ATOMIC_RELAXED) == before &&
            (!rewriting(before) || (attempt >= 16 && !writer_present(fd))))
            return true;
        if (attempt >= 16) ::sched_yield();  // let the writer finish its record
    }
    return false;
}

}  // namespace

std::pair<std::shared_ptr<Mapping>, Header> open_store(const std::string& path, bool writable) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    Fd f{::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_NONBLOCK | O_CLOEXEC)};
    if (f.fd < 0) fail_os("", path);
    const uint64_t size = regular_file_size(f.fd, path);
    if (size < kHeaderSize) parse_header(nullptr, size, path);  // throws before reading
    auto map = std::make_shared<Mapping>(std::move(f), size, writable, path);
    const Header h = parse_header(map->data(), size, path);
    check_sections(map->data(), h, path);
    return {std::move(map), h};
}

void lock_for_writing(int fd, const std::string& path) {
    // An open-file-description lock: held by this open, not by the process, so a second
    // Writer in the same process conflicts too, and it ends when the descriptor is closed.
    // Byte-range, so a later mode may let writers of disjoint records share the file.
    struct flock lock = header_lock(F_WRLCK);
#ifdef F_OFD_SETLK
    if (::fcntl(fd, F_OFD_SETLK, &lock) == 0) return;
#else
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return;
#endif
    if (errno == EAGAIN || errno == EACCES || errno == EWOULDBLOCK)
        fail(ErrorKind::kLocked, path, ": another writer has this file open for writing (it holds the writer lock); "
             "close that writer first");
    fail_os("locking for writing", path);
}

void unlock_for_writing(int fd) {
#ifdef F_OFD_SETLK
    struct flock lock = header_lock(F_UNLCK);
    ::fcntl(fd, F_OFD_SETLK, &lock);
#else
    ::flock(fd, LOCK_UN);
#endif
}

// ---------------------------------------------------------------------------------------------
// Mapping

Mapping::Mapping(Fd fd, uint64_t size, bool writable, const std::string& path)
    : fd_(std::move(fd)), size_(size), path_(path) {
    void* p = ::mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd_.fd, 0);
    if (p == MAP_FAILED) fail_os("mmap", path);
    data_ = static_cast<uint8_t*>(p);
}

Mapping::~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
}

void Mapping::check_size() const {
    // lseek to the end reads the size like fstat at a fraction of its cost (this runs on every
    // batch); the descriptor's offset is used by nothing else.
    const off_t size = ::lseek(fd_.fd, 0, SEEK_END);
    if (size < 0) fail_os("lseek", path_);
    if (static_cast<uint64_t>(size) < size_)
        fail(ErrorKind::kFormat, path_, ": file is truncated: expected ", size_, " bytes, found ", size,
             " (it was cut while open; reading the lost records would crash with SIGBUS)");
}

PrivateView::PrivateView(const Mapping& file, uint64_t offset, uint64_t length, const std::string& path) {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    mapped_ = offset + length - start;
    void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE, file.fd(), static_cast<off_t>(start));
    if (p == MAP_FAILED) fail_os("mmap", path);
    base_ = static_cast<uint8_t*>(p);
    data_ = base_ + (offset - start);
    size_ = length;
}

PrivateView::~PrivateView() {
    if (base_ != nullptr) ::munmap(base_, mapped_);
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
    map_->check_size();
    return map_->data() + h_.records_offset + static_cast<uint64_t>(epoch) * h_.epoch_bytes();
}

std::shared_ptr<PrivateView> Store::private_epoch(int64_t epoch) const {
    const uint8_t* records = epoch_records(epoch);
    return std::make_shared<PrivateView>(*map_, static_cast<uint64_t>(records - map_->data()), h_.epoch_bytes(), path_);
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
    const RecordLayout l = h_.layout();
    for (uint64_t i = 0; i < h_.num_samples; ++i) out[i] = record_written(base + i * h_.record_size, l);
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
         stored_class(rec, h_.layout(), pos), " at position ", pos, " outside [0, ", h_.num_classes,
         ") (the record is corrupted)");
}

// Calls decode(r, rec) for every r in [0, n), rec a copy of record (epoch, ids[r]); decode
// returns a RecordStatus and sets pos for kBadIndex. Random ids miss the caches and the TLB:
// prefetching a chunk of records first issues their loads back to back, so the misses
// overlap (the word-by-word atomic copy alone is too many instructions per record for the
// CPU to run ahead), and the copy and the decode then read from L1. Precondition: ids[0, n) do not change during the call
// (the bindings pass a copy they own).
template <class Decode>
void Reader::for_each_record(int64_t epoch, const int64_t* ids, size_t n, Decode&& decode) const {
    const uint8_t* base = epoch_records(epoch);
    check_ids(epoch, ids, n);
    const RecordLayout l = h_.layout();
    const uint32_t rs = l.size, words = l.words();
    const uint64_t* entry = epoch_entry_ptr(static_cast<uint32_t>(epoch));
    alignas(64) uint32_t stack[1024];  // 32 records of up to 128 bytes fit: no allocation per call
    const size_t chunk = std::max<size_t>(1, std::min<size_t>(32, 1024 / words));
    std::vector<uint32_t> heap(words > 1024 ? words : 0);
    uint32_t* local = heap.empty() ? stack : heap.data();
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        const size_t m = std::min(chunk, n - r0);
        // Precondition: 0 <= ids[r] < N (check_ids), so each record lies inside the mapping.
        // A record seen written is whole if no rewrite of this epoch overlapped the copy: the
        // epoch's rewrite sequence is even and the same before and after (FORMAT.md, "Rewriting").
        for (size_t j = 0; j < m; ++j) {
            const uint8_t* src = base + ids[r0 + j] * rs;
            for (uint32_t b = 0; b < rs; b += 64) __builtin_prefetch(src + b);
            __builtin_prefetch(src + rs - 1);  // a record may straddle one cache line more than rs / 64
        }
        const uint64_t before = __atomic_load_n(entry, __ATOMIC_ACQUIRE);
        for (size_t j = 0; j < m; ++j) copy_record(base + ids[r0 + j] * rs, local + j * words, l);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (rewriting(before) || __atomic_load_n(entry, __ATOMIC_RELAXED) != before) {
            for (size_t j = 0; j < m; ++j)
                if (!copy_settled(entry, base + ids[r0 + j] * rs, local + j * words, l, map_->fd()))
                    fail(ErrorKind::kUnwritten, path_, ": epoch ", epoch, ", sample ", ids[r0 + j],
                         ": record not written (the writer holding the file kept rewriting records of this "
                         "epoch while it was read)");
        }
        for (size_t j = 0; j < m; ++j) {
            uint32_t pos = 0;
            const auto* rec = reinterpret_cast<const uint8_t*>(local + j * words);
            const RecordStatus st = decode(r0 + j, rec, &pos);
            if (st != RecordStatus::kOk) fail_record(epoch, ids[r0 + j], static_cast<int>(st), pos, rec);
        }
    }
}

// One instantiation per index type, so that the per-record loop has no branch on the layout.
void Reader::decode_dense(int64_t epoch, const int64_t* ids, size_t n, float fill, float* out,
                          int32_t* seeds) const {
    const RecordLayout l = h_.layout();
    const uint32_t c = h_.num_classes;
    const bool zero_fill = f32_bits(fill) == 0;
    const auto run = [&](auto index) {
        using Index = decltype(index);
        for_each_record(epoch, ids, n, [&](size_t r, const uint8_t* rec, uint32_t* pos) {
            return decode_dense_record<Index>(rec, l, c, fill, zero_fill, out + r * c, seeds + r, pos);
        });
    };
    l.wide ? run(uint32_t{}) : run(uint16_t{});
}

void Reader::decode_topk(int64_t epoch, const int64_t* ids, size_t n, float* values, int64_t* indices,
                         int32_t* seeds) const {
    const RecordLayout l = h_.layout();
    const uint32_t k = l.k, c = h_.num_classes;
    const auto run = [&](auto index) {
        using Index = decltype(index);
        for_each_record(epoch, ids, n, [&](size_t r, const uint8_t* rec, uint32_t* pos) {
            return decode_topk_record<Index>(rec, l, c, values + r * k, indices + r * k, seeds + r, pos);
        });
    };
    l.wide ? run(uint32_t{}) : run(uint16_t{});
}

void Reader::verify(bool require_complete, int64_t epoch) const {
    const RecordLayout l = h_.layout();
    const uint32_t k = l.k, c = h_.num_classes;
    if (epoch != -1) epoch_records(epoch);  // range check
    const uint32_t first = epoch == -1 ? 0 : static_cast<uint32_t>(epoch);
    const uint32_t end = epoch == -1 ? h_.num_epochs : first + 1;
    RepeatFinder repeats(c);
    for (uint32_t e = first; e < end; ++e) {
        const auto [state, crc] = epoch_entry(e);
        const bool sealed = state == kEpochSealed;
        const uint8_t* base = epoch_records(e);
        for (uint64_t i = 0; i < h_.num_samples; ++i) {
            const uint8_t* rec = base + i * h_.record_size;
            const auto bad = [&](auto... parts) {
                fail(ErrorKind::kIntegrity, path_, ": epoch ", e, ", sample ", i, ": ", parts...);
            };
            if (!record_written(rec, l)) {
                if (sealed) bad("record not written in a sealed epoch");
                if (require_complete) fail(ErrorKind::kUnwritten, path_, ": epoch ", e, ", sample ", i, ": record not written");
                continue;
            }
            repeats.start(k);
            const uint8_t* indices = rec + l.indices_offset;
            float previous = 0.0f;
            for (uint32_t j = 0; j < k; ++j) {
                const int64_t cls = l.wide ? int64_t{load<int32_t>(indices + 4 * j)} : int64_t{load<int16_t>(indices + 2 * j)};
                if (cls < 0 || cls >= c) bad("class index ", cls, " at position ", j, " outside [0, ", c, ")");
                if (repeats.add(cls, j) >= 0) bad("class index ", cls, " appears twice");
                const uint16_t bits = load<uint16_t>(rec + 2 * j);
                if (!f16_is_finite(bits)) bad("value at position ", j, " is not finite");
                const float v = f16_to_f32(bits);
                if (j > 0 && v > previous)
                    bad("values are not non-increasing: ", previous, " at position ", j - 1, ", then ", v);
                previous = v;
            }
            for (uint32_t b = 2 * k; b < l.indices_offset; ++b)
                if (rec[b] != 0) bad("padding after the values is not zero");
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
