// CRC-32 of zlib / PNG / Ethernet (reflected polynomial 0xEDB88320, init and final XOR
// 0xFFFFFFFF), slicing-by-8. crc32(data, n, zlib.crc32(a)) == zlib.crc32(a + data).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace cedstore {

namespace detail {

// Built at compile time: no static initialisation at load time, nothing to lock (fork-safe).
constexpr std::array<std::array<uint32_t, 256>, 8> make_crc_tables() {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int b = 0; b < 8; ++b) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
        t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
        for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
    return t;
}

inline constexpr auto kCrcTables = make_crc_tables();

}  // namespace detail

inline uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
    const auto& t = detail::kCrcTables;
    uint32_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {  // little-endian host: the low word holds p[0..3]
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
            t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^ t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
    }
    for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xffu] ^ (c >> 8);
    return ~c;
}

}  // namespace cedstore
