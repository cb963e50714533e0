#!/usr/bin/env python3
"""Per-pass timing of single-call set-ups on the wire (the `sip_calls` bench, or any
caller -> tcf-1 -> tcf-2 -> callee traffic on loopback), from a pcap of lo.

    tcpdump -i lo -w calls.pcap -s 1600 -B 131072 'udp and (port P1 or port P2)'
    tools/call-passes.py calls.pcap P1 P2

P1 and P2 are the SIP ports of the caller's node and the callee's node. Every call's INVITE
and 200 are matched across the three legs (by the callee number in the Request-URI, then by
Call-ID per leg). Prints p50/p90/p99/max of each pass (tcf-1 INVITE in -> out, tcf-2 INVITE,
the callee's answer, tcf-2 200, tcf-1 200, the whole set-up on the wire), how the slowest 1%
spread over the passes and over time (20 ms bins), and the longest silences of each sender.
"""
import collections
import re
import struct
import sys


def packets(path):
    with open(path, 'rb') as f:
        header = f.read(24)
        nano = struct.unpack('<I', header[:4])[0] == 0xa1b23c4d
        link = struct.unpack('<I', header[20:24])[0]
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            seconds, fraction, included, _ = struct.unpack('<IIII', record)
            data = f.read(included)
            at = seconds + fraction / (1e9 if nano else 1e6)
            offset = 14 if link == 1 else (16 if link == 113 else 4)
            ip = data[offset:]
            ihl = (ip[0] & 15) * 4
            source, destination = struct.unpack('>HH', ip[ihl:ihl + 4])
            yield at, source, destination, ip[ihl + 8:]


def header(text, name):
    match = re.search(r'^' + name + r':\s*(.*?)\r?$', text, re.M | re.I)
    return match.group(1) if match else ''


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main():
    path, tcf1, tcf2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    invites, oks, senders = [], {}, []
    for at, source, destination, payload in packets(path):
        text = payload[:1500].decode('latin1')
        first = text.split('\r\n', 1)[0]
        senders.append((at, 'tcf-1' if source == tcf1 else 'tcf-2' if source == tcf2 else 'terminals'))
        if first.startswith('INVITE '):
            user = re.match(r'INVITE sip:([^@;> ]+)', first)
            invites.append((at, source, destination, user.group(1) if user else '', header(text, 'Call-ID')))
        elif first.startswith('SIP/2.0 200') and 'INVITE' in header(text, 'CSeq'):
            oks.setdefault(header(text, 'Call-ID'), at)
    nodes = (tcf1, tcf2)
    waiting_first, waiting_second, first_legs, rows = collections.defaultdict(list), collections.defaultdict(list), {}, []
    for at, source, destination, user, call_id in invites:
        if destination == tcf1 and source not in nodes:
            waiting_first[user].append((at, call_id))
        elif source == tcf1 and destination == tcf2 and waiting_first[user]:
            first_legs[call_id] = waiting_first[user].pop(0) + (at,)
            waiting_second[user].append(call_id)
        elif source == tcf2 and destination not in nodes and waiting_second[user]:
            middle = waiting_second[user].pop(0)
            start, outer, forwarded = first_legs[middle]
            if outer in oks and middle in oks and call_id in oks:
                answered, relayed, done = oks[call_id], oks[middle], oks[outer]
                rows.append((forwarded - start, at - forwarded, answered - at, relayed - answered, done - relayed,
                             done - start, start))
    names = ['tcf-1 INVITE', 'tcf-2 INVITE', 'callee answer', 'tcf-2 200', 'tcf-1 200', 'set-up']
    print(f'calls matched: {len(rows)}')
    for index, name in enumerate(names):
        column = [row[index] for row in rows]
        print(f'{name:14s} p50 {quantile(column, .5):6.3f}  p90 {quantile(column, .9):6.3f}  '
              f'p99 {quantile(column, .99):6.3f}  max {quantile(column, 1):7.3f} ms')
    rows.sort(key=lambda row: row[5])
    slowest = rows[int(len(rows) * 0.99):]
    if slowest:
        print('slowest 1%, mean per pass (ms):',
              ' '.join(f'{names[i]}={sum(r[i] for r in slowest) / len(slowest) * 1000:.2f}' for i in range(6)))
        begin = min(row[6] for row in rows)
        bins = collections.Counter(int((row[6] - begin) * 1000 // 20) for row in slowest)
        print(f'slowest 1%: {len(slowest)} calls in {len(bins)} of '
              f'{int((max(r[6] for r in rows) - begin) * 50) + 1} 20-ms bins; fullest: {bins.most_common(5)}')
    last, silences = {}, []
    begin = senders[0][0] if senders else 0
    for at, who in senders:
        if who in last and at - last[who] > 0.0015:
            silences.append((at - last[who], last[who] - begin, who))
        last[who] = at
    for length, since, who in sorted(silences, reverse=True)[:10]:
        print(f'{who} silent {length * 1000:.2f} ms from {since:.3f} s')


if __name__ == '__main__':
    main()
