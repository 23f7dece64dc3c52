"""Training targets for masked prediction: MFCC and deep-feature frames for k-means."""
