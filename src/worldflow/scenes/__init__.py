"""The scene registry: the tagged objects, products, zones and placements of a world's scenes
(glTF 2.0 node ``extras``, X3D metadata), with object ids that stay the same across scene
versions (docs/SCENES.md)."""
