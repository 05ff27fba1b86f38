// The error family of the C++ core. Each kind maps to one Python class in cedstore/errors.py
// (bindings.cpp) and to one status code of the C API (cedstore.h).
#pragma once

#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace cedstore {

enum class ErrorKind : int {
    kFormat = 1,              // FormatError: not a store, bad header / sections / key table
    kUnsupportedVersion = 2,  // UnsupportedVersionError
    kIntegrity = 3,           // IntegrityError: bad record content or epoch CRC
    kUnwritten = 4,           // UnwrittenRecordError
    kWriterClosed = 5,        // WriterClosedError
    kInvalidInput = 6,        // InvalidInputError: bad arguments to the writer or encoder
    kIndex = 7,               // builtin IndexError: epoch or sample id out of range
    kOS = 8,                  // OSError with errno (FileNotFoundError, FileExistsError, ...)
    kClosed = 9,              // CedStoreError: the reader was closed
    kLocked = 10,             // CedStoreError: another writer holds the writer lock
};

class Error : public std::runtime_error {
  public:
    explicit Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    // An OS error: what() is "filename: detail"; Python gets OSError(os_errno, detail, filename).
    Error(int os_errno, const std::string& detail, const std::string& filename)
        : std::runtime_error(filename + ": " + detail),
          kind_(ErrorKind::kOS),
          os_errno_(os_errno),
          detail_(detail),
          filename_(filename) {}
    ErrorKind kind() const noexcept { return kind_; }
    int os_errno() const noexcept { return os_errno_; }
    const std::string& detail() const noexcept { return detail_; }
    const std::string& filename() const noexcept { return filename_; }

  private:
    ErrorKind kind_;
    int os_errno_ = 0;
    std::string detail_, filename_;
};

// Builds a message from any streamable parts: fail(kFormat, path, ": expected ", x).
template <class... Parts>
[[noreturn]] void fail(ErrorKind kind, const Parts&... parts) {
    std::ostringstream s;
    (s << ... << parts);
    throw Error(kind, s.str());
}

// Raises OSError for the current errno; what ("mmap", ...) may be empty for a plain open.
[[noreturn]] inline void fail_os(const std::string& what, const std::string& path) {
    const int err = errno;
    throw Error(err, what.empty() ? std::strerror(err) : what + ": " + std::strerror(err), path);
}

}  // namespace cedstore
