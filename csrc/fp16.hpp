// IEEE 754 binary16 <-> binary32 conversion in software (no F16C), bit-exact with numpy's
// astype(np.float16) / astype(np.float32): round to nearest, ties to even, subnormals kept,
// overflow to signed infinity.
#pragma once

#include <cstdint>
#include <cstring>

namespace cedstore {

inline uint32_t f32_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}

inline float bits_f32(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

// Exact: every binary16 value is a binary32 value. Branch-free: normals are rebiased; Inf/NaN
// are rebiased once more; subnormals come out of an exact subtraction of two normal floats, so
// the result does not depend on the FPU's flush-to-zero / denormals-are-zero modes.
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa
    const uint32_t exp = shifted & 0x0f800000u;
    const uint32_t normal = shifted + ((127u - 15u) << 23);
    const uint32_t inf_nan = normal + ((128u - 16u) << 23);
    // mant * 2^-24 = (1.mant * 2^-14) - 2^-14, both normal floats: exact.
    const float subnormal = bits_f32(normal + (1u << 23)) - bits_f32(113u << 23);
    const uint32_t magnitude = exp == 0x0f800000u ? inf_nan : (exp == 0 ? f32_bits(subnormal) : normal);
    return bits_f32(magnitude | sign);
}

inline bool f16_is_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

// Round a binary32 to binary16, ties to even. NaN stays NaN (quiet), out of range -> +-Inf.
inline uint16_t f32_to_f16(float x) {
    const uint32_t f = f32_bits(x);
    const uint32_t sign = (f >> 16) & 0x8000u;
    const uint32_t abs = f & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // Inf or NaN
        if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
        return static_cast<uint16_t>(sign | 0x7e00u | ((abs & 0x7fffffu) >> 13));
    }
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
    if (abs < 0x38800000u) {  // below the smallest normal half, 2^-14: subnormal or zero
        if (abs <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds to 0
        const uint32_t exp = abs >> 23;                       // in [102, 112]
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // with the implicit one
        const uint32_t shift = 126u - exp;                    // in [14, 24]
        uint32_t h = mant >> shift;
        const uint32_t rest = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        h += rest + (h & 1u) > half;  // round half to even, branch-free; a carry makes it normal
        return static_cast<uint16_t>(sign | h);
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
    uint32_t h = (abs - 0x38000000u) >> 13;
    const uint32_t rest = abs & 0x1fffu;
    h += rest + (h & 1u) > 0x1000u;  // round half to even, branch-free; a carry bumps the exponent
    return static_cast<uint16_t>(sign | h);
}

}  // namespace cedstore
