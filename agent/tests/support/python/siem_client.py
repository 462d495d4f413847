"""What a SIEM integration written in Python does with tokenwatch: it has no
.proto files, so it discovers the API by server reflection (grpcio-reflection's
ProtoReflectionDescriptorDatabase, which asks grpc.reflection.v1alpha), then
subscribes to the alert stream, takes the first alert, and asks for the token
usage inventory. Prints one JSON line per step; exits non-zero on any failure.

Usage: siem_client.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def say(**fields):
    print(json.dumps(fields), flush=True)


def main(target):
    channel = grpc.insecure_channel(target)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    say(step="services", services=services)
    pool = descriptor_pool.DescriptorPool(database)
    alerts = pool.FindServiceByName("tokenwatch.v1.AlertService")
    inventory = pool.FindServiceByName("tokenwatch.v1.InventoryService")

    def rpc(service, name):
        method = service.FindMethodByName(name)
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        path = "/%s/%s" % (service.full_name, name)
        return method, request, response, path

    _, request, response, path = rpc(alerts, "Subscribe")
    subscribe = channel.unary_stream(
        path, request_serializer=request.SerializeToString, response_deserializer=response.FromString
    )
    stream = subscribe(request(follow=True), timeout=60)
    for item in stream:
        if item.HasField("alert"):
            alert = json_format.MessageToDict(item.alert)
            say(step="alert", rule=alert.get("rule"), pid=alert.get("process", {}).get("pid"))
            stream.cancel()
            break

    _, request, response, path = rpc(inventory, "GetInventory")
    get_inventory = channel.unary_unary(
        path, request_serializer=request.SerializeToString, response_deserializer=response.FromString
    )
    answer = json_format.MessageToDict(get_inventory(request(), timeout=30))
    say(step="inventory", nodes=answer.get("nodes", []))


if __name__ == "__main__":
    main(sys.argv[1])
