// SPDX-License-Identifier: GPL-2.0-only
//
// The host addon's concerns; the shared model is agent/native/glue/glue.h.
#ifndef VMSUBST_HOST_GLUE_H
#define VMSUBST_HOST_GLUE_H

#include "glue.h"

namespace vs {

void RegisterDiff(Napi::Env env, Napi::Object exports, Napi::Object constants);     // diff.cc
void RegisterConnect(Napi::Env env, Napi::Object exports, Napi::Object constants);  // connect.cc

}  // namespace vs

#endif  // VMSUBST_HOST_GLUE_H
