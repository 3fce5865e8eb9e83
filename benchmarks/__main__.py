from floraedge import stage_main

stage_main("bench")
