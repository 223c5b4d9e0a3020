"""Drafters propose the tokens that the target then verifies in one batch."""

from .base import Drafter, Proposal
from .model import ModelDrafter

__all__ = ["Drafter", "Proposal", "ModelDrafter"]
