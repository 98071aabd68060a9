"""Mixer's runtime: snapshots of compiled config with live handlers, and the Check / Report /
quota dispatch over them."""
