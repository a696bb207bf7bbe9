"""Starting and stopping the processes of a federation (Flower's SuperLink, SuperNodes and CLI), shared by the
site (`client`), the server tools (`server`) and the launchers (`simulations`): stdlib and psutil only."""
