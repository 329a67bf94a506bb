"""The Istio Wasm image `make oci` builds (integration/oci/build.py): reproducible to the byte,
shaped as Istio's "compat" variant, and readable by skopeo when it is installed."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT, WASM

BUILD = ROOT / "integration" / "oci" / "build.py"
TAG = "0.1.0-test"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def build(wasm, out_dir):
    result = subprocess.run([sys.executable, str(BUILD), "--tag", TAG, str(wasm), str(out_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


class Image:
    def __init__(self, out_dir, stdout):
        self.out_dir = out_dir
        self.stdout = stdout
        self.layout = out_dir / "layout"
        self.archive = out_dir / "looper.oci.tar"

    def blob(self, digest):
        algorithm, hex_digest = digest.split(":", 1)
        assert algorithm == "sha256"
        return (self.layout / "blobs" / "sha256" / hex_digest).read_bytes()

    def index(self):
        return json.loads((self.layout / "index.json").read_text())

    def manifest_descriptor(self):
        (descriptor,) = self.index()["manifests"]
        return descriptor

    def manifest(self):
        return json.loads(self.blob(self.manifest_descriptor()["digest"]))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two builds: one from the built plugin, one from a copy of it with another mtime and
    mode, as a different checkout or machine would have."""
    first = tmp_path_factory.mktemp("oci-a")
    second = tmp_path_factory.mktemp("oci-b")
    copy = tmp_path_factory.mktemp("wasm-copy") / "looper.wasm"
    shutil.copyfile(WASM, copy)
    os.chmod(copy, 0o600)
    os.utime(copy, (1_234_567_890, 1_234_567_890))
    return Image(first, build(WASM, first)), Image(second, build(copy, second))


def test_two_builds_are_byte_identical(images):
    a, b = images
    assert a.archive.read_bytes() == b.archive.read_bytes()
    assert files_under(a.layout) == files_under(b.layout)
    assert a.stdout.splitlines()[0] == b.stdout.splitlines()[0]


def test_rebuilding_in_place_replaces_the_outputs(images, tmp_path):
    a, _ = images
    out = tmp_path / "oci"
    build(WASM, out)
    (out / "layout" / "blobs" / "sha256" / ("0" * 64)).write_bytes(b"stale")
    build(WASM, out)
    assert files_under(out / "layout") == files_under(a.layout)
    assert (out / "looper.oci.tar").read_bytes() == a.archive.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["layout", "looper.oci.tar"]


def test_layout_index_and_manifest(images):
    image, _ = images
    assert json.loads((image.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    index = image.index()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == INDEX_TYPE
    descriptor = image.manifest_descriptor()
    assert descriptor["mediaType"] == MANIFEST_TYPE
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == TAG
    manifest_bytes = image.blob(descriptor["digest"])
    assert sha256(manifest_bytes) == descriptor["digest"]
    assert len(manifest_bytes) == descriptor["size"]
    # The digest to pin in a WasmPlugin (`sha256`) or EnvoyFilter, printed by the build.
    assert image.stdout.splitlines()[0] == f"manifest {descriptor['digest']}"

    manifest = image.manifest()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_TYPE
    # The compat variant's annotation (solo-io/wasm spec-compat.md).
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"

    config_descriptor = manifest["config"]
    assert config_descriptor["mediaType"] == CONFIG_TYPE
    config_bytes = image.blob(config_descriptor["digest"])
    assert sha256(config_bytes) == config_descriptor["digest"]
    assert len(config_bytes) == config_descriptor["size"]

    # Istio's fetcher wants exactly one layer of this type for the compat variant.
    (layer_descriptor,) = manifest["layers"]
    assert layer_descriptor["mediaType"] == LAYER_TYPE
    layer = image.blob(layer_descriptor["digest"])
    assert sha256(layer) == layer_descriptor["digest"]
    assert len(layer) == layer_descriptor["size"]

    config = json.loads(config_bytes)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(gzip.decompress(layer))]}
    assert (config["os"], config["architecture"]) == ("wasip1", "wasm")
    assert "created" not in config and "history" not in config

    blobs = {p.name for p in (image.layout / "blobs" / "sha256").iterdir()}
    referenced = {d["digest"].split(":", 1)[1]
                  for d in (descriptor, config_descriptor, layer_descriptor)}
    assert blobs == referenced


def test_the_layer_holds_exactly_plugin_wasm(images):
    image, _ = images
    (layer_descriptor,) = image.manifest()["layers"]
    layer = image.blob(layer_descriptor["digest"])
    # gzip header: magic, deflate, no flags (so no file name), mtime 0.
    assert layer[:4] == b"\x1f\x8b\x08\x00"
    assert layer[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        (member,) = members
        assert member.isreg()
        assert (member.mode, member.mtime, member.uid, member.gid) == (0o644, 0, 0, 0)
        assert (member.uname, member.gname) == ("", "")
        assert tar.extractfile(member).read() == WASM.read_bytes()


def test_the_archive_is_the_layout(images):
    image, _ = images
    with tarfile.open(image.archive) as tar:
        members = tar.getmembers()
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", ""), m.name
            assert m.mode == (0o755 if m.isdir() else 0o644), m.name
        files = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}
    assert files == files_under(image.layout)


def test_a_file_that_is_not_wasm_is_refused(tmp_path):
    bogus = tmp_path / "plugin.wasm"
    bogus.write_bytes(b"not wasm")
    result = subprocess.run([sys.executable, str(BUILD), str(bogus), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a wasm module" in result.stderr
    assert not (tmp_path / "out").exists()


def skopeo(*args):
    result = subprocess.run(["skopeo", "--insecure-policy", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("skopeo") is None,
                    reason="skopeo is not installed (Debian/Ubuntu: apt-get install -y skopeo)")
def test_skopeo_reads_both_forms_and_copies_without_changing_the_digest(images, tmp_path):
    image, _ = images
    digest = image.manifest_descriptor()["digest"]
    for reference in (f"oci:{image.layout}:{TAG}", f"oci-archive:{image.archive}"):
        inspected = json.loads(skopeo("inspect", reference))
        assert inspected["Digest"] == digest, reference
        assert inspected["Layers"] == [image.manifest()["layers"][0]["digest"]], reference
    # A copy, like the push to a registry, keeps the manifest as built, so a digest pinned
    # in the Istio manifests stays valid.
    skopeo("copy", "--preserve-digests", f"oci-archive:{image.archive}", f"oci:{tmp_path / 'copy'}:{TAG}")
    assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'copy'}:{TAG}"))["Digest"] == digest
