"""Packages the plugin as a reproducible Istio Wasm image (`make oci`).

The image is the "compat" variant of the Wasm image spec that Istio's agent pulls
(solo-io/wasm `spec/spec-compat.md`, istio/istio `pkg/wasm/imagefetcher.go`):

- an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) with the annotation
  `module.wasm.image/variant: compat`;
- an image config (`application/vnd.oci.image.config.v1+json`) for os `wasip1`, architecture
  `wasm`, whose `rootfs.diff_ids` is the digest of the uncompressed layer;
- exactly one layer, `application/vnd.oci.image.layer.v1.tar+gzip`, a tar holding only
  `plugin.wasm` at its root.

Two outputs, both under OUT_DIR:

- `layout/`: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`); the index
  names the manifest `<tag>` (`org.opencontainers.image.ref.name`);
- `looper.oci.tar`: the same layout as one tar, the `oci-archive` transport of skopeo and podman.

The same wasm always gives the same bytes, whatever the build machine's clock, user or umask
and the wasm file's own mtime and mode: every tar entry has mtime 0, uid/gid 0, no user or group
name and a fixed mode; gzip has mtime 0 and no file name; the JSON documents are serialized
with sorted keys and no whitespace and carry no timestamp. (The deflate stream comes from
Python's zlib; a different zlib build, such as zlib-ng, could compress differently.) The
manifest digest is therefore known before the image is pushed, and can pin it in a WasmPlugin
(`sha256`) or an EnvoyFilter (`remote.sha256`): registries store OCI manifests as pushed.

Usage: build.py [--tag TAG] [--name NAME] WASM OUT_DIR
Prints the manifest digest and the two output paths. Standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
WASM_NAME = "plugin.wasm"
LAYOUT_DIR = "layout"
ARCHIVE_NAME = "looper.oci.tar"
WASM_MAGIC = b"\0asm"


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fixed_tarinfo(name, size=0, directory=False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_bytes(entries):
    """A ustar archive of (name, bytes or None for a directory), in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            if data is None:
                tar.addfile(fixed_tarinfo(name, directory=True))
            else:
                tar.addfile(fixed_tarinfo(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the header free of the build's file name and time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def descriptor(media_type, data, annotations=None):
    d = {"mediaType": media_type, "digest": digest(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def image_blobs(wasm, name, tag):
    """The layer, config and manifest blobs, and the index.json of the layout."""
    layer_tar = tar_bytes([(WASM_NAME, wasm)])
    layer = gzip_bytes(layer_tar)
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, config),
        "layers": [descriptor(LAYER_TYPE, layer)],
        "annotations": {
            VARIANT_ANNOTATION: "compat",
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": tag,
        },
    })
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [descriptor(MANIFEST_TYPE, manifest, {REF_NAME_ANNOTATION: tag})],
    })
    return [layer, config, manifest], index, digest(manifest)


def layout_entries(blobs, index):
    """The layout's files (and directories) in a fixed order, for the directory and the tar."""
    entries = [
        ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", index),
        ("blobs", None),
        ("blobs/sha256", None),
    ]
    by_name = {f"blobs/sha256/{digest(b).split(':', 1)[1]}": b for b in blobs}
    entries.extend(sorted(by_name.items()))
    return entries


def write_outputs(entries, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    # Write everything next to the outputs first, then swap it in: a stale blob from an earlier
    # build never survives, and an error while writing leaves the previous outputs untouched.
    staging = Path(tempfile.mkdtemp(prefix=".oci-", dir=out_dir))
    try:
        layout = staging / LAYOUT_DIR
        layout.mkdir()
        for name, data in entries:
            path = layout / name
            if data is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.write_bytes(data)
                os.chmod(path, 0o644)
        archive = staging / ARCHIVE_NAME
        archive.write_bytes(tar_bytes(entries))
        final_layout = out_dir / LAYOUT_DIR
        if final_layout.exists():
            shutil.rmtree(final_layout)
        layout.rename(final_layout)
        archive.replace(out_dir / ARCHIVE_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / LAYOUT_DIR, out_dir / ARCHIVE_NAME


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("wasm", type=Path, help="the plugin, e.g. target/wasm32-wasip1/release/looper.wasm")
    parser.add_argument("out_dir", type=Path, help="output directory, e.g. target/oci")
    parser.add_argument("--tag", default="latest", help="image tag recorded in index.json")
    parser.add_argument("--name", default="looper", help="image title annotation")
    args = parser.parse_args(argv)

    wasm = args.wasm.read_bytes()
    if not wasm.startswith(WASM_MAGIC):
        parser.error(f"{args.wasm} is not a wasm module")
    blobs, index, manifest_digest = image_blobs(wasm, args.name, args.tag)
    layout, archive = write_outputs(layout_entries(blobs, index), args.out_dir)
    print(f"manifest {manifest_digest}")
    print(f"layout   {layout} (oci:{layout}:{args.tag})")
    print(f"archive  {archive} (oci-archive:{archive}:{args.tag})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
