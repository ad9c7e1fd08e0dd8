"""Shared memory and wake-ups: the ring segments bytes cross workers in, and how a side that
waits on the other is woken (a datagram between workers, a flag within one).

Above ``core`` only: it knows the ring's byte layout, never HTTP or the rendezvous.
"""
