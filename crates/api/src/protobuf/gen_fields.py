#!/usr/bin/env python3
"""Regenerates fields.txt: the protobuf field numbers of the Kubernetes API types.

The field numbers are part of the Kubernetes API's protobuf wire format. This script
reads them from the k8s-pb crate's generated sources (in the cargo registry) and writes
one line per message:

    <message> <tag>:<rust_field>:<kind>[:<type>] ...

kinds: M message, RM repeated message, s string, Rs repeated string, i int32, I int64,
Ri/RI repeated (packed) ints, b bool, y bytes, d double, Mm map<string, message>,
Ms map<string, string>, My map<string, bytes>.
Usage: gen_fields.py PATH/TO/k8s-pb-X.Y.Z/src > fields.txt
"""
import os
import re
import sys

root = sys.argv[1]
out = []
for dirpath, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        if not f.endswith('.rs') or f == 'lib.rs':
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)
        mod = rel[:-len('/mod.rs')] if rel.endswith('/mod.rs') else rel[:-3]
        package = 'io.k8s.' + mod.replace('/', '.')
        text = open(os.path.join(dirpath, f)).read()
        for m in re.finditer(r'pub struct (\w+) \{(.*?)\n\}', text, re.S):
            name, body = m.group(1), m.group(2)
            fields = []
            for fm in re.finditer(r'#\[prost\(([^\]]*)\)\]\s*pub (?:r#)?(\w+):\s*(.*?),\s*(?=///|#\[|$)', body + '\n', re.S):
                spec, rust, ty = fm.group(1), fm.group(2), ' '.join(fm.group(3).split())
                tag = re.search(r'tag = "(\d+)"', spec).group(1)

                def msg_type():
                    # the last path in the type that names a message struct
                    paths = re.findall(r'((?:super::)*(?:[a-z_0-9]+::)*[A-Z]\w*)', ty)
                    paths = [p for p in paths if p.split('::')[-1] not in ('Option', 'Vec', 'Box', 'String', 'BTreeMap')]
                    if not paths:
                        raise SystemExit(f"{package}.{name}.{rust}: no message type in {ty!r}")
                    p = paths[-1]
                    parts = mod.split('/')
                    segs = p.split('::')
                    ups = segs.count('super')
                    segs = [x for x in segs if x != 'super']
                    base = parts[:len(parts) - ups]
                    if len(segs) == 1:
                        return 'io.k8s.' + '.'.join(parts) + '.' + segs[0]
                    return 'io.k8s.' + '.'.join(base + segs[:-1]) + '.' + segs[-1]

                if spec.startswith('btree_map'):
                    v = re.search(r'btree_map = "string, (\w+)"', spec).group(1)
                    kind = {'message': 'Mm', 'string': 'Ms', 'bytes': 'My'}[v]
                else:
                    base_kind = spec.split(',')[0].strip().split(' ')[0]
                    kind = {'message': 'M', 'string': 's', 'int32': 'i', 'int64': 'I', 'bool': 'b',
                            'bytes': 'y', 'double': 'd'}[base_kind]
                    if 'repeated' in spec:
                        kind = 'R' + kind
                entry = f'{tag}:{rust}:{kind}'
                if kind in ('M', 'RM', 'Mm'):
                    entry += ':' + msg_type()
                fields.append(entry)
            out.append(package + '.' + name + ' ' + ' '.join(fields))
print('\n'.join(out))
