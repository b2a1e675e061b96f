"""A test-only model family: the Wan2.1 architecture under another name, on the `ModelFamily` contract.

It shows what adding a family takes: this module, a preset (`tiny-echo`, written by the test) and
one registry line (here the RADIAL_STUDIO_FAMILIES entry `echo=tests.families.echo`). Runs record its
name, and its model cards carry its own tag.
"""

from engine.models.wan import WanFamily


class EchoFamily(WanFamily):
    name = "echo"
    description = "Echo (a test-only family on the Wan2.1 architecture)"
    card_tags = ("echo",)


FAMILY = EchoFamily()
