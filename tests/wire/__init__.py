"""Tests of the wire package, gloomwire: framing, the codec and its policy."""
