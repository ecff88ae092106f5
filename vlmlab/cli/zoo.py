"""`zoo list | verify`: the checkpoint store of vlmlab.zoo. `list` prints each saved checkpoint; `verify` checks each
one's hashes and measures every model whose record names an evaluation set again, with the `measure` of the
strategy that saved it (`vlmlab.zoo.verify`): no list of verifiers here, a new strategy is verified as it is saved.
Introduced in notebook 00.
"""

from __future__ import annotations


def cmd_zoo(args) -> int:
    from .. import zoo

    if args.action == "list":
        records = zoo.list_checkpoints()
        if not records:
            print("no checkpoints yet: the training notebooks save them")
        for record in records:
            detail = record.get("error") or f"{record.get('dtype', '?')}, created {record.get('created', '?')}"
            print(f"{record['name']:<20} {record['location']:<8} {detail}  ({record['path']})")
        return 0
    results = zoo.verify_all()
    for name, ok, message in results:
        print(f"{'✓' if ok else '✗'} {name:<20} {message}")
    print(f"{sum(ok for _, ok, _ in results)}/{len(results)} checkpoints verified")
    return 0 if all(ok for _, ok, _ in results) else 1
