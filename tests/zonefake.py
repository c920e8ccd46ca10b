"""A scripted plain-DNS server over TCP (and UDP) for --forward-zone tests: a kube-dns that
misbehaves on purpose (tests/test_zone_tcp.py, tests/test_restart.py).

Every query for a name at or below the zone gets A 198.51.100.1 (TTL 60) unless `mode`
says otherwise; `mode` may be changed while it runs (a flapping server):

  answer    answer at once                   delay     answer after `delay` seconds
  silent    accept, read, never answer       close     accept, read the query, FIN
  reset     accept, read the query, RST      refuse    no listener (connection refused)
  wrong_id  answer with another ID           wrong_q   answer another question
  huge      a 65,535-byte length prefix, then `huge_bytes` bytes of it, then silence
  zero      a zero length prefix             drip      the answer one byte every `delay` s
  flood     65,535-byte junk frames (a wrong ID each) as long as the peer reads, then
            the real answer
  tc        (UDP only) TC=1 without records: the TCP retry path

Records: .tcp_conns (connections accepted), .tcp_queries, .udp_queries, .max_open (most
connections open at once).
"""

import socket
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset

import helpers


class ZoneServer:
    def __init__(self, zone, host="127.0.0.1", port=None, mode="answer", delay=0.5,
                 huge_bytes=1000):
        self.zone = dns.name.from_text(zone)
        self.host = host
        self.port = port or helpers.free_port()
        self.mode = mode
        self.delay = delay
        self.huge_bytes = huge_bytes
        self.tcp_conns = self.tcp_queries = self.udp_queries = 0
        self.open = self.max_open = 0
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.socks = []
        self.ls = None
        self.us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.us.bind((host, self.port))
        self.socks.append(self.us)
        if mode != "refuse":
            self.listen()
        self.threads = [threading.Thread(target=self.udp_loop, daemon=True),
                        threading.Thread(target=self.accept_loop, daemon=True)]
        for t in self.threads:
            t.start()

    # ------------------------------------------------------------ listener
    def listen(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(256)
        ls.settimeout(0.1)
        with self.lock:
            self.ls = ls
            self.socks.append(ls)

    def set_mode(self, mode):
        """Changes the behaviour; "refuse" closes the listener, any other mode opens it."""
        with self.lock:
            ls = self.ls
        if mode == "refuse" and ls is not None:
            with self.lock:
                self.ls = None
            ls.close()
        elif mode != "refuse" and ls is None:
            self.listen()
        self.mode = mode

    # ------------------------------------------------------------ answers
    def answer(self, wire, mode):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        name = q.question[0].name
        if name.is_subdomain(self.zone):
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "198.51.100.1"))
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        if mode == "wrong_id":
            r.id = (q.id + 1) & 0xFFFF
        if mode == "wrong_q":
            other = dns.message.make_query("other." + self.zone.to_text(), "A")
            other.id = q.id
            r = dns.message.make_response(other)
            r.answer.append(dns.rrset.from_text(other.question[0].name, 60, "IN", "A",
                                                "198.51.100.66"))
        if mode == "tc":
            r.answer = []
            r.flags |= dns.flags.TC
        return r.to_wire()

    # ------------------------------------------------------------ UDP
    def udp_loop(self):
        self.us.settimeout(0.1)
        while not self.halt.is_set():
            try:
                wire, src = self.us.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.udp_queries += 1
            mode = self.mode
            if mode in ("silent", "refuse"):
                continue
            try:
                self.us.sendto(self.answer(wire, "tc" if mode == "tc" else "answer"), src)
            except (OSError, ValueError, dns.exception.DNSException):
                pass

    # ------------------------------------------------------------ TCP
    def accept_loop(self):
        while not self.halt.is_set():
            with self.lock:
                ls = self.ls
            if ls is None:
                time.sleep(0.05)
                continue
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                time.sleep(0.05)
                continue
            with self.lock:
                self.tcp_conns += 1
                self.open += 1
                self.max_open = max(self.max_open, self.open)
                self.socks.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            self._serve(c)
        except (OSError, EOFError, ValueError, dns.exception.DNSException):
            pass
        finally:
            with self.lock:
                self.open -= 1
            try:
                c.close()
            except OSError:
                pass

    def _serve(self, c):
        c.settimeout(30)
        mode = self.mode
        wire = helpers.tcp_recv_msg(c)
        with self.lock:
            self.tcp_queries += 1
        if mode == "silent":
            self.halt.wait(30)
            return
        if mode == "close":
            c.shutdown(socket.SHUT_WR)
            self.halt.wait(1)
            return
        if mode == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if mode == "huge":
            c.sendall(b"\xff\xff" + b"\0" * self.huge_bytes)
            self.halt.wait(30)
            return
        if mode == "zero":
            c.sendall(b"\0\0")
            self.halt.wait(1)
            return
        if mode == "flood":
            junk = bytearray(65535)
            junk[0:2] = wire[0:2]
            junk[0] ^= 0x55
            c.settimeout(2)
            try:
                for _ in range(50):
                    c.sendall(b"\xff\xff" + bytes(junk))
            except OSError:
                return
            c.sendall(helpers.tcp_frame(self.answer(wire, "answer")))
            self.halt.wait(1)
            return
        if mode in ("delay", "drip"):
            if mode == "delay":
                self.halt.wait(self.delay)
                c.sendall(helpers.tcp_frame(self.answer(wire, "answer")))
            else:
                for b in helpers.tcp_frame(self.answer(wire, "answer")):
                    c.sendall(bytes([b]))
                    if self.halt.wait(self.delay):
                        return
            self.halt.wait(1)
            return
        c.sendall(helpers.tcp_frame(self.answer(wire, mode)))
        self.halt.wait(0.5)    # the client closes first (no TIME_WAIT here)

    def stop(self):
        self.halt.set()
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(2)
