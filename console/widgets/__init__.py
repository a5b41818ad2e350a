"""The console's panes and the widgets they are made of."""
