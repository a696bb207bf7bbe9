"""The `pedseg` command: assembled here from the layers below it (`pedseg_core` for data, training, prediction
and reports; `simulations` for the Flower federations), so that no layer reaches up into another."""
