// SPDX-License-Identifier: GPL-2.0-only
//
// Argument checks of the glue: a TypeError for a wrong type, a RangeError for
// a value out of range, before any syscall.
#include <stdint.h>

#include "glue.h"

namespace vs {

double ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name,
                  double min, double max) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a number");
  }
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= min && v <= max) || v != static_cast<double>(static_cast<int64_t>(v))) {
    throw Napi::RangeError::New(info.Env(),
                                std::string(name) + " must be an integer in [" +
                                    std::to_string(static_cast<int64_t>(min)) + ", " +
                                    std::to_string(static_cast<int64_t>(max)) + "]");
  }
  return v;
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint32_t>(ArgInteger(info, i, name, 0, 4294967295.0));
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<int>(ArgInteger(info, i, "fd", 0, 2147483647.0));
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBigInt()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a bigint");
  }
  bool lossless = false;
  const uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    throw Napi::RangeError::New(info.Env(),
                                std::string(name) + " must be in [0, 2^64)");
  }
  return v;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a string");
  }
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must not contain NUL");
  }
  return s;
}

Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsFunction()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a function");
  }
  return info[i].As<Napi::Function>();
}

uv_loop_t* Loop(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "vmsubst_native: no libuv event loop");
  }
  return loop;
}

}  // namespace vs
