"""Images as one kind of data: the seed article's GAN, its training, evaluation, sampling and card."""
