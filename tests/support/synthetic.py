"""tests/support/synthetic.proto compiled at test time and loaded into the default descriptor pool."""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from google.api import annotations_pb2  # noqa: F401
from google.protobuf import descriptor as d
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, field_mask_pb2, timestamp_pb2, wrappers_pb2  # noqa: F401  (imports of the proto)

from tools.protogen import _wkt_dir, sync_deps

HERE = Path(__file__).parent


@functools.cache
def service() -> d.ServiceDescriptor:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{HERE}",
                f"-I{sync_deps()}",
                f"-I{_wkt_dir()}",
                f"--descriptor_set_out={out}",
                "synthetic.proto",
            ],
            check=True,
            capture_output=True,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.Default()
    for f in files.file:  # only synthetic.proto: its imports are in the pool already
        pool.Add(f)
    return pool.FindServiceByName("emma.testonly.v1.LibraryService")
