/*
 * A compile-time flag as a value, for generic lambdas: one body called as
 * f(fa_flag<true>()) or f(fa_flag<false>()) tests decltype(x)::value, so
 * each call compiles only its own branch (both GPU backends use it).
 */
#ifndef FA_CUDA_FLAG_CUH
#define FA_CUDA_FLAG_CUH

template <bool B> struct fa_flag {
    static constexpr bool value = B;
};

#endif
