"""From the field back to a better model: the capture policy a bundle ships, captured rows
pulled from devices, labelled datasets, challenger against champion, and the training data's
own suspicious labels."""
