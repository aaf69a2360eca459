{
  "targets": [
    {
      "target_name": "vmsubst_native",
      "sources": [
        "native/glue/binding.cc",
        "native/glue/args.cc",
        "native/glue/errors.cc",
        "native/glue/fs.cc",
        "native/glue/kmod.cc",
        "native/glue/stream.cc",
        "native/glue/uapi.cc",
        "native/glue/vsock.cc",
        "native/glue/walk.cc",
        "native/devctl.c",
        "native/direct_io.c",
        "native/fiemap.c",
        "native/notify.c",
        "native/vsock.c",
        "native/vsock_listen.c",
        "native/walk.c"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "include_dirs": [
        "native",
        "native/glue",
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
