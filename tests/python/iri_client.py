"""A gRPC C-core client (Python grpcio, default channel options) driving cephvol over its socket.

Usage: python iri_client.py --socket PATH --proto-dir crates/iri/proto

Generates the IRI stubs from the proto files into a temporary directory, then calls Version,
Status, CreateVolume, ListVolumes (until the volume is AVAILABLE) and DeleteVolume (until it is
gone) on `unix:PATH`. C-core sends the percent-encoded socket path as the HTTP/2 `:authority`,
which is what this client is here to exercise. Prints one line per call; exits 1 on the first
failure.
"""

import argparse
import importlib
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

PROTOS = ["meta/v1alpha1/api.proto", "event/v1alpha1/api.proto", "volume/v1alpha1/api.proto"]
MIB = 1 << 20
WAIT_SECONDS = 120


def generate_stubs(proto_dir, out_dir):
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + PROTOS) != 0:
        raise SystemExit(f"protoc failed on {proto_dir}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("volume.v1alpha1.api_pb2")
    rpc = importlib.import_module("volume.v1alpha1.api_pb2_grpc")
    meta = importlib.import_module("meta.v1alpha1.api_pb2")
    return pb, rpc, meta


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def wait_for(what, probe):
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS}s waiting for {what}")
        time.sleep(0.1)


def run(socket_path, pb, rpc, meta):
    # Default options on purpose: no authority override, as a user of grpcio would write it.
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = rpc.VolumeRuntimeStub(channel)

        version = stub.Version(pb.VersionRequest(), timeout=30)
        check(version.runtime_name == "ceph-provider", f"Version: {version}")
        print(f"Version: {version.runtime_name} {version.runtime_version}")

        status = stub.Status(pb.StatusRequest(), timeout=30)
        classes = [s.volume_class.name for s in status.volume_class_status]
        check("standard" in classes, f"Status: {status}")
        print(f"Status: classes {classes}")

        request = pb.CreateVolumeRequest(
            volume=pb.Volume(
                metadata=meta.ObjectMetadata(labels={"client": "python-grpcio"}),
                spec=pb.VolumeSpec(
                    **{"class": "standard"},
                    resources=pb.VolumeResources(storage_bytes=8 * MIB),
                ),
            )
        )
        created = stub.CreateVolume(request, timeout=30).volume
        volume_id = created.metadata.id
        check(volume_id, f"CreateVolume: no id in {created}")
        print(f"CreateVolume: {volume_id}")

        by_id = pb.ListVolumesRequest(filter=pb.VolumeFilter(id=volume_id))

        def available():
            volumes = stub.ListVolumes(by_id, timeout=30).volumes
            check(len(volumes) <= 1, f"ListVolumes by id: {volumes}")
            if volumes and volumes[0].status.state == pb.VOLUME_ERROR:
                raise AssertionError(f"volume {volume_id} failed: {volumes[0]}")
            if volumes and volumes[0].status.state == pb.VOLUME_AVAILABLE:
                return volumes[0]
            return None

        volume = wait_for(f"volume {volume_id} to become available", available)
        check(volume.metadata.labels["client"] == "python-grpcio", f"labels: {volume}")
        listed = [v.metadata.id for v in stub.ListVolumes(pb.ListVolumesRequest(), timeout=30).volumes]
        check(volume_id in listed, f"ListVolumes: {volume_id} not in {listed}")
        print(f"ListVolumes: {volume_id} available, {volume.status.resources.storage_bytes} bytes")

        stub.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=30)

        def gone():
            return True if not stub.ListVolumes(by_id, timeout=30).volumes else None

        wait_for(f"volume {volume_id} to be gone", gone)
        print(f"DeleteVolume: {volume_id} gone")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--proto-dir", required=True)
    args = parser.parse_args()
    print(f"grpcio {grpc.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="cephvol-py-stubs-") as out_dir:
        pb, rpc, meta = generate_stubs(args.proto_dir, out_dir)
        try:
            run(args.socket, pb, rpc, meta)
        except grpc.RpcError as e:
            print(f"FAILED: RPC error {e.code()}: {e.details()}", file=sys.stderr)
            return 1
        except AssertionError as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    print("all calls succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
