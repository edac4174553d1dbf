"""A stand-in engine for tests of failure reports: built in a Ray actor, it forks a child that keeps
the actor's inherited sockets open (as a library's helper process started without exec does), so
that Ray learns of the actor's death late; its calls take long enough to be killed in."""

import os
import time


class ForkingEngine:
    def __init__(self, role=None, seed=None):
        self.child = os.fork()
        if self.child == 0:  # the child: holds every descriptor of the actor, does nothing, exits quietly
            time.sleep(60)
            os._exit(0)

    def generate(self, *args, **kwargs):
        time.sleep(60)
        return []

    def close(self):
        os.kill(self.child, 9)
