"""An independent Avro producer for sluice's Avro tests (tests/avro.rs).

Writes `count` click records to a topic with PyPI's fastavro (raw binary
Avro, `--mode raw`) or confluent-kafka's AvroSerializer, which registers
the schema with the registry and frames each message with Confluent's magic
byte and schema id (`--mode framed`). Bad records are mixed in, one every
`--bad-every` records, cycling over the classes given by `--bad`.

Prints one JSON line per message delivered:
{"partition": p, "offset": o, "id": n} for a good record (id = its
sequence number), {"partition": p, "offset": o, "bad": class, "payload":
hex} for a bad one.
"""

import argparse
import decimal
import io
import json
import sys

import fastavro
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = {
    "type": "record",
    "name": "Click",
    "namespace": "shop",
    "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "id", "type": "long"},
        {
            "name": "user",
            "type": {
                "type": "record",
                "name": "User",
                "fields": [
                    {"name": "name", "type": "string"},
                    {
                        "name": "geo",
                        "type": [
                            "null",
                            {"type": "record", "name": "Geo", "fields": [{"name": "country", "type": "string"}]},
                        ],
                        "default": None,
                    },
                ],
            },
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "seen", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": None},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["view", "buy"]}},
    ],
}

COUNTRIES = ["DE", "FR", "JP", None]


def click(n):
    country = COUNTRIES[n % len(COUNTRIES)]
    return {
        "ts": 1_764_000_000_000 + n,
        "id": n,
        "user": {"name": f"u{n % 7}", "geo": None if country is None else {"country": country}},
        "tags": ["a"] * (n % 3),
        "price": decimal.Decimal(n % 1000) / 100,
        "seen": None if n % 2 else 1_764_000_000_000_000 + n,
        "kind": "buy" if n % 5 == 0 else "view",
    }


def raw(record):
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA), record)
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--mode", choices=["raw", "framed"], required=True)
    ap.add_argument("--registry")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--bad", default="")
    ap.add_argument("--bad-every", type=int, default=100)
    ap.add_argument("--schema-out")
    args = ap.parse_args()

    if args.schema_out:
        with open(args.schema_out, "w") as f:
            json.dump(SCHEMA, f)
    if args.mode == "framed":
        serializer = AvroSerializer(SchemaRegistryClient({"url": args.registry}), json.dumps(SCHEMA))
        context = SerializationContext(args.topic, MessageField.VALUE)

        def encode(record):
            return serializer(record, context)

    else:
        encode = raw

    bad_classes = [c for c in args.bad.split(",") if c]
    out = []

    def delivered(err, msg, entry):
        if err is not None:
            sys.exit(f"delivery failed: {err}")
        entry.update(partition=msg.partition(), offset=msg.offset())
        out.append(entry)

    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    b = 0
    for n in range(args.count):
        partition = n % args.partitions
        if bad_classes and n % args.bad_every == args.bad_every // 2:
            kind = bad_classes[b % len(bad_classes)]
            b += 1
            good = encode(click(n))
            payload = {
                "truncated": good[: len(good) // 2],
                "wrong_magic_byte": b"\x01" + good[1:] if args.mode == "framed" else None,
                "unknown_schema_id": b"\x00" + (987654).to_bytes(4, "big") + good[5:] if args.mode == "framed" else None,
                "invalid_avro": good + b"\x00\x00",
            }[kind]
            entry = {"bad": kind, "payload": payload.hex()}
            producer.produce(args.topic, payload, partition=partition, on_delivery=lambda e, m, x=entry: delivered(e, m, x))
        entry = {"id": n}
        producer.produce(args.topic, encode(click(n)), partition=partition, on_delivery=lambda e, m, x=entry: delivered(e, m, x))
        producer.poll(0)
    if producer.flush(30) != 0:
        sys.exit("messages left undelivered")
    for entry in out:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
