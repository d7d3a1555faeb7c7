"""Data sets beyond the bundled digits and synthetic tensors (`data=NAME`).

`text`: the Python standard library's own source as text, and a generated sequence language
(no download, on every machine with Python). `gan`: samples for GANs (a ring of Gaussians, digit
images). `vision`: CIFAR-10/100 and ImageFolder (ImageNet) read from `data.root` through DataLoaders.
"""
