"""Image statistics of encoded frames, for tests: what ingest computes from the decoder's frames
(:func:`~lerobot_assets.core.lerobot.stats.channel_counts` of LeRobot's sampled frames), from their bytes."""

from collections.abc import Sequence

import numpy as np

from lerobot_assets.core.lerobot.stats import channel_counts, image_stats_from_counts, sample_indices
from lerobot_assets.core.media.codec import decode_rgb


def image_stats(frames: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Per-channel stats of one camera over an episode's encoded frames (the ``sample_indices`` of them)."""
    sampled = sample_indices(len(frames))
    return image_stats_from_counts(sum(channel_counts(decode_rgb(frames[i])) for i in sampled), len(sampled))
