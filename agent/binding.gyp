{
  "targets": [
    {
      "target_name": "vmsubst_native",
      "sources": [
        "native/binding.cc",
        "native/compare.c",
        "native/devctl.c",
        "native/direct_io.c",
        "native/fiemap.c",
        "native/notify.c",
        "native/seek.c",
        "native/vsock.c",
        "native/walk.c"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "include_dirs": [
        "native",
        "../kmod/include/uapi"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags": [
        "-Wall",
        "-Wextra",
        "-Werror"
      ],
      "cflags_c": [
        "-std=gnu11"
      ]
    }
  ]
}
